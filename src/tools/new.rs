//! `iicp-host new --lang rust|python|js NAME`: a plugin skeleton that
//! builds with its own `build.sh` and passes `iicp-host check` as
//! generated. Templates live in `templates/<lang>/` and are compiled into
//! the binary; `{{name}}` and friends are filled in on the way out. Python
//! and JavaScript skeletons get the plugin WIT written beside them.

use std::path::{Path, PathBuf};

/// A plugin language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust, on the iicp-plugin-sdk crate.
    Rust,
    /// Python, built with componentize-py.
    Python,
    /// JavaScript, built with componentize-js.
    Js,
}

struct TemplateFile {
    path: &'static str,
    content: &'static str,
}

impl TemplateFile {
    /// Build scripts are written executable.
    fn executable(&self) -> bool {
        self.path.ends_with(".sh")
    }
}

macro_rules! template {
    ($lang:literal, $path:literal) => {
        TemplateFile {
            path: $path,
            content: include_str!(concat!("../../templates/", $lang, "/", $path)),
        }
    };
}

const RUST: &[TemplateFile] = &[
    template!("rust", "Cargo.toml"),
    template!("rust", "src/lib.rs"),
    template!("rust", "build.sh"),
    template!("rust", "README.md"),
    template!("rust", ".gitignore"),
];

const PYTHON: &[TemplateFile] = &[
    template!("python", "app.py"),
    template!("python", "build.sh"),
    template!("python", "requirements.txt"),
    template!("python", "README.md"),
    template!("python", ".gitignore"),
];

const JS: &[TemplateFile] = &[
    template!("js", "app.js"),
    template!("js", "build.sh"),
    template!("js", "package.json"),
    template!("js", "package-lock.json"),
    template!("js", "README.md"),
    template!("js", ".gitignore"),
];

/// The plugin contract, written beside Python and JavaScript skeletons.
const PLUGIN_WIT: &str = include_str!("../../wit/plugin.wit");

/// The SDK crate of this source tree, used by Rust skeletons by default.
const BUNDLED_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/plugins/sdk");

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-')
}

fn type_name(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// Creates `parent/name` from the `lang` skeleton; returns its path.
pub fn new_plugin(
    lang: Lang,
    name: &str,
    parent: &Path,
    sdk: Option<&Path>,
) -> Result<PathBuf, String> {
    if !valid_name(name) {
        return Err(format!(
            "{name:?}: a plugin name is 1-64 lowercase letters, digits and '-', starting with a letter"
        ));
    }
    let dir = parent.join(name);
    if dir.exists() && std::fs::read_dir(&dir).map_or(true, |mut entries| entries.next().is_some())
    {
        return Err(format!("{} already exists and is not empty", dir.display()));
    }
    let sdk_path = match sdk {
        Some(path) => path.to_path_buf(),
        None => PathBuf::from(BUNDLED_SDK),
    };
    if lang == Lang::Rust && !sdk_path.join("Cargo.toml").exists() {
        return Err(format!(
            "the iicp-plugin-sdk crate is not at {}; pass --sdk PATH (plugins/sdk in the iicp-host sources)",
            sdk_path.display()
        ));
    }
    let sdk_path = sdk_path.canonicalize().unwrap_or(sdk_path);
    let files = match lang {
        Lang::Rust => RUST,
        Lang::Python => PYTHON,
        Lang::Js => JS,
    };
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{crate_name}}", &name.replace('-', "_"))
            .replace("{{type_name}}", &type_name(name))
            .replace("{{sdk_path}}", &sdk_path.display().to_string())
    };
    let write = |path: &Path, content: &str, executable: bool| -> Result<(), String> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::write(path, content)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        if executable {
            make_executable(path)?;
        }
        Ok(())
    };
    for file in files {
        write(&dir.join(file.path), &fill(file.content), file.executable())?;
    }
    if lang != Lang::Rust {
        write(&dir.join("wit/plugin.wit"), PLUGIN_WIT, false)?;
    }
    Ok(dir)
}

#[cfg(unix)]
fn make_executable(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("cannot make {} executable: {e}", path.display()))
}

#[cfg(not(unix))]
fn make_executable(_path: &Path) -> Result<(), String> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_type_names() {
        assert!(valid_name("my-plugin2"));
        for bad in ["", "My", "2x", "a_b", "a-", &"a".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert_eq!(type_name("my-plugin2"), "MyPlugin2");
    }

    #[test]
    fn every_template_has_its_placeholders_filled() {
        let temp = std::env::temp_dir().join(format!("iicp-new-test-{}", std::process::id()));
        for (lang, name) in [
            (Lang::Rust, "alpha-one"),
            (Lang::Python, "beta"),
            (Lang::Js, "gamma"),
        ] {
            let dir = new_plugin(lang, name, &temp, None).unwrap();
            for entry in walk(&dir) {
                let text = std::fs::read_to_string(&entry).unwrap_or_default();
                assert!(
                    !text.contains("{{"),
                    "{} keeps a placeholder",
                    entry.display()
                );
            }
            assert!(
                new_plugin(lang, name, &temp, None)
                    .unwrap_err()
                    .contains("already exists")
            );
        }
        std::fs::remove_dir_all(&temp).unwrap();
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files.extend(walk(&path));
            } else {
                files.push(path);
            }
        }
        files
    }
}
