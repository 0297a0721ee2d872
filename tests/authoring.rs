//! The plugin-author commands: `check`, `call`, `compile` (and `run` of a
//! compiled artifact) and `new` for every language.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{Node, plugin, post_task, task};
use serde_json::{Value, json};

fn host(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_iicp-host"))
        .args(args)
        .env("XDG_CACHE_HOME", common::shared_cache_dir())
        .output()
        .expect("run iicp-host")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

#[test]
fn check_reports_what_a_plugin_declares_and_imports() {
    let echo = plugin("echo");
    let output = host(&["check", echo.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let report = text(&output.stdout);
    assert!(
        report.starts_with("ok: echo 0.1.0 fits the iicp:plugin world"),
        "{report}"
    );
    assert!(
        report.contains("urn:iicp:intent:llm:chat:v1  models: echo  max_tokens: 8192  input: text"),
        "{report}"
    );
    assert!(
        // The echo reads its config (`also_declare`), so it imports that too.
        report.contains("imports:\n  iicp:plugin/config@0.1.0\n  iicp:plugin/types@0.1.0"),
        "{report}"
    );
    assert!(
        report.contains("exports:\n  iicp:plugin/handler@0.1.0"),
        "{report}"
    );
    assert!(report.contains("sha256 "));

    // Configuration reaches describe.
    let llm = plugin("openai-chat");
    let output = host(&["check", llm.to_str().unwrap(), "--config", "model=my-model"]);
    assert!(
        text(&output.stdout).contains("models: my-model"),
        "{}",
        text(&output.stdout)
    );
}

#[test]
fn check_explains_a_plugin_that_does_not_fit() {
    let command = plugin("cli-command");
    let output = host(&["check", command.to_str().unwrap()]);
    assert!(!output.status.success());
    let explanation = text(&output.stderr);
    assert!(
        explanation.contains("does not fit the iicp:plugin world: it does not export iicp:plugin/handler@0.1.0 (it exports wasi:cli/run@"),
        "{explanation}"
    );
    assert!(
        explanation.contains("exports:\n  wasi:cli/run@"),
        "{explanation}"
    );
    assert!(
        explanation.contains("hint: build it against wit/plugin.wit"),
        "{explanation}"
    );

    let dir = tempfile::tempdir().unwrap();
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let output = host(&["check", core.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("is a core WebAssembly module, not a component"));
}

fn call_lines(output: &Output, success: bool) -> (Value, String) {
    assert_eq!(
        output.status.success(),
        success,
        "{} {}",
        text(&output.stdout),
        text(&output.stderr)
    );
    let printed = if success {
        text(&output.stdout)
    } else {
        text(&output.stderr)
    };
    let mut lines = printed.lines();
    let result: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    (result, lines.next().unwrap_or_default().to_string())
}

#[test]
fn call_runs_one_task_and_prints_result_and_time() {
    let echo = plugin("echo");
    let output = host(&[
        "call",
        echo.to_str().unwrap(),
        "--intent",
        "urn:iicp:intent:llm:chat:v1",
        "--payload",
        r#"{"messages":[{"role":"user","content":"hello from call"}]}"#,
    ]);
    let (result, timing) = call_lines(&output, true);
    assert_eq!(result["status"], "success");
    assert_eq!(
        result["result"]["choices"][0]["message"]["content"],
        "hello from call"
    );
    assert_eq!(result["usage"]["total_tokens"], 6);
    assert_eq!(result["model_used"], "echo");
    assert!(
        timing.starts_with("took ") && timing.contains(" ms (instantiate "),
        "{timing}"
    );

    // The first declared intent is the default; a typed error exits non-zero.
    let output = host(&["call", echo.to_str().unwrap(), "--payload", "{}"]);
    let (result, _) = call_lines(&output, false);
    assert_eq!(
        result,
        json!({"status": "error", "error": {"kind": "invalid-input", "message": "payload.messages has no user message"}})
    );

    // Config values and secrets reach the plugin.
    let misbehave = plugin("misbehave");
    let output = Command::new(env!("CARGO_BIN_EXE_iicp-host"))
        .args([
            "call",
            misbehave.to_str().unwrap(),
            "--intent",
            "urn:iicp:intent:test:config:v1",
        ])
        .args([
            "--payload",
            r#"{"secret":"key","expect":"v4lue"}"#,
            "--config",
            "mode=fast",
        ])
        .args(["--secret", "key=TEST_CALL_SECRET"])
        .env("TEST_CALL_SECRET", "v4lue")
        .output()
        .unwrap();
    let (result, _) = call_lines(&output, true);
    assert_eq!(result["result"]["values"], json!({"mode": "fast"}));
    assert_eq!(result["result"]["secret_matches"], true);

    let output = host(&[
        "call",
        misbehave.to_str().unwrap(),
        "--intent",
        "urn:iicp:intent:test:loop:v1",
        "--timeout-ms",
        "300",
    ]);
    let (result, _) = call_lines(&output, false);
    assert_eq!(result["error"]["kind"], "timeout");
    let output = host(&["call", echo.to_str().unwrap(), "--payload", "{not json"]);
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("--payload is not JSON"));
}

#[tokio::test(flavor = "multi_thread")]
async fn compiled_artifacts_are_served_by_run_only_when_opted_in() {
    let dir = tempfile::tempdir().unwrap();
    let artifact = dir.path().join("echo.cwasm");
    let echo = plugin("echo");
    let output = host(&[
        "compile",
        echo.to_str().unwrap(),
        "-o",
        artifact.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        text(&output.stdout).starts_with("compiled "),
        "{}",
        text(&output.stdout)
    );
    assert!(std::fs::metadata(&artifact).unwrap().len() > 0);

    // Native code runs only where the operator opted in for the file.
    let mut command = Command::new(env!("CARGO_BIN_EXE_iicp-host"));
    command
        .args(["run", "--listen", "127.0.0.1:0", "--plugin"])
        .arg(&artifact)
        .arg("--state-dir")
        .arg(common::fresh_state_dir());
    let lines = common::refused_to_start(&mut command);
    assert_eq!(
        lines,
        [format!(
            "iicp-host: error: {} is a compiled artifact (native code the node would run as itself), not a .wasm component: load it only if you compiled it, with `precompiled = true` in its [[plugin]] table or --precompiled",
            artifact.display()
        )]
    );

    // The tools, likewise: refused without the opt-in, run with it.
    let echo_call = [
        "--intent",
        "urn:iicp:intent:util:echo:v1",
        "--payload",
        "{}",
    ];
    for (tool, extra) in [("check", &[][..]), ("call", &echo_call[..])] {
        let mut args = vec![tool, artifact.to_str().unwrap()];
        args.extend_from_slice(extra);
        let refused = host(&args);
        assert!(!refused.status.success(), "{tool}");
        assert!(
            text(&refused.stderr).contains("is a compiled artifact (native code"),
            "{tool}: {}",
            text(&refused.stderr)
        );
        args.push("--precompiled");
        let run = host(&args);
        assert!(run.status.success(), "{tool}: {}", text(&run.stderr));
    }

    let node = Node::start(&artifact, &["--precompiled"]);
    let loaded = node
        .log_entries()
        .into_iter()
        .find(|e| common::message(e) == "plugin loaded")
        .unwrap();
    assert_eq!(loaded["fields"]["cached"], false);
    let body = task(
        "aot",
        "urn:iicp:intent:util:echo:v1",
        json!({"compiled": true}),
    );
    let (status, _, answer) = post_task(&node, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["result"], json!({"compiled": true}));

    // Compiling an artifact again is refused with a reason.
    let again = dir.path().join("again.cwasm");
    let output = host(&[
        "compile",
        artifact.to_str().unwrap(),
        "-o",
        again.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("already a compiled artifact"),
        "{}",
        text(&output.stderr)
    );
}

/// Brings the tree at `to` up to the one at `from`, writing only the files
/// whose bytes differ (with `from`'s permissions), so their times say what
/// changed; files only in `to` (build outputs) stay.
fn sync_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        if source.is_dir() {
            sync_tree(&source, &target);
            continue;
        }
        let bytes = std::fs::read(&source).unwrap();
        if std::fs::read(&target).ok().as_deref() != Some(&bytes[..]) {
            std::fs::write(&target, &bytes).unwrap();
            std::fs::set_permissions(&target, entry.metadata().unwrap().permissions()).unwrap();
        }
    }
}

/// Runs `new`, then the skeleton's own build.sh, then `check` on the result.
/// The skeleton is built in a directory kept between runs (in the test's
/// target directory), brought up to what `new` wrote this time file by
/// file: its build.sh rebuilds when `new` wrote anything else and finds its
/// output up to date otherwise — a Python or JS skeleton costs a minute of
/// CPU to build, for bytes that did not change. `check` runs every time.
fn new_builds_and_checks(lang: &str, name: &str, env: &[(&str, &Path)]) {
    let dir = tempfile::tempdir().unwrap();
    let output = host(&[
        "new",
        "--lang",
        lang,
        name,
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let project = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("skeletons")
        .join(name);
    sync_tree(&dir.path().join(name), &project);
    let build = Command::new(project.join("build.sh"))
        .current_dir(&project)
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .output()
        .expect("run build.sh");
    assert!(
        build.status.success(),
        "{lang} skeleton did not build:\n{}\n{}",
        text(&build.stdout),
        text(&build.stderr)
    );
    let wasm = project.join(format!("{name}.wasm"));
    let output = host(&["check", wasm.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let report = text(&output.stdout);
    assert!(report.contains(&format!("ok: {name} ")), "{report}");
    assert!(
        report.contains(&format!("urn:iicp:intent:example:{name}:v1")),
        "{report}"
    );
}

#[test]
fn a_new_rust_plugin_builds_and_passes_check() {
    // Share the plugins' target directory so the SDK is not compiled again.
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/target");
    plugin("echo");
    new_builds_and_checks("rust", "fresh-rust", &[("CARGO_TARGET_DIR", &target)]);
}

#[test]
fn a_new_python_plugin_builds_and_passes_check() {
    new_builds_and_checks("python", "fresh-python", &[]);
}

#[test]
fn a_new_js_plugin_builds_and_passes_check() {
    new_builds_and_checks("js", "fresh-js", &[]);
}

#[test]
fn new_refuses_bad_names_and_existing_directories() {
    let dir = tempfile::tempdir().unwrap();
    let output = host(&[
        "new",
        "--lang",
        "rust",
        "Bad_Name",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("lowercase letters"));
    std::fs::create_dir_all(dir.path().join("taken/src")).unwrap();
    let output = host(&[
        "new",
        "--lang",
        "rust",
        "taken",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(text(&output.stderr).contains("already exists"));
}
