#!/usr/bin/env bash
# Installs the reference consumer (PyPI iicp-client, pinned in
# requirements.txt) that tests/protocol_rules.rs drives through consumer.py
# (and tests/relay_framed.rs its relay worker through worker.py), and prints
# the python to run it with.
#
# The venv lives in the tools directory the plugin builds share,
# ${IICP_TOOLS_DIR:-${XDG_CACHE_HOME:-~/.cache}/iicp-host/tools}/iicp-client-<version>.
# Installing it needs python3 with the venv module and PyPI access, once;
# later runs find it and need no network (`make test` runs this first).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
pin="$(grep -E '^iicp-client(\[[a-z-]+\])?==' "$here/requirements.txt")"
want="${pin#*==}"
tools="${IICP_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/iicp-host/tools}"
venv="$tools/iicp-client-$want"
python="$venv/bin/python"

# The iicp-tcp extra (cbor2) is what its relay worker (worker.py) needs.
installed() {
    [ "$("$python" -c "import cbor2, importlib.metadata as m; print(m.version('iicp-client'))" 2>/dev/null)" = "$want" ]
}

if ! installed; then
    python3 -c 'import ensurepip, venv' 2>/dev/null || {
        echo "error: the reference consumer needs python3 with the venv module (Debian: apt-get install python3-venv)" >&2
        exit 1
    }
    mkdir -p "$tools"
    # One install at a time: test binaries may ask at once.
    exec 9>"$tools/.iicp-client.lock"
    flock 9
    if ! installed; then
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            -r "$here/requirements.txt" >&2 || {
            rm -rf "$venv"
            echo "error: cannot install iicp-client $want from PyPI; the first run needs network access (later runs reuse $venv)" >&2
            exit 1
        }
    fi
    exec 9>&-
fi
echo "$python"
