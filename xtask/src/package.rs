//! `cargo xtask package`: the Debian package from the release build (man pages,
//! completions, the unit for /usr/bin, the docs with their links rewritten for where they
//! are installed, shield-flask's sources), then lintian.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{build, cargo, root, run, step};

/// Where the package's generated files are staged (`cargo deb` reads them from here; the
/// paths are in shield-user/Cargo.toml's `[package.metadata.deb]`).
const STAGE: &str = "target/release/shield-package";

/// Builds the Debian package from the release build; returns the .deb's path.
pub(crate) fn package() -> Result<PathBuf> {
    let bin = build(true)?;
    let stage = root().join(STAGE);
    if stage.exists() {
        std::fs::remove_dir_all(&stage).with_context(|| format!("clearing {}", stage.display()))?;
    }
    step("generating man pages and shell completions (shield generate-assets)");
    run(Command::new(&bin)
        .args(["generate-assets", "--out"])
        .arg(&stage))?;

    // Man pages compressed per Debian policy (cargo-deb compresses only files from outside
    // target/release/, and the staging directory is inside it).
    let man = stage.join("man");
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&man)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "1"))
        .collect();
    pages.sort();
    run(Command::new("gzip").arg("-9n").args(&pages))?;

    // The unit as packaged: the binary lives in /usr/bin, not /usr/local/bin.
    let unit = std::fs::read_to_string(root().join("deploy/shield.service"))
        .context("reading deploy/shield.service")?;
    let unit = unit
        .replace(
            "# shield: XDP abuse shield. Install the binary at /usr/local/bin/shield, the policy at\n# /etc/shield/policy.toml, then: systemctl daemon-reload && systemctl enable --now shield\n",
            "# shield: XDP abuse shield (Debian package: installed disabled). Set the interface, then\n# systemctl enable --now shield\n",
        )
        .replace("/usr/local/bin/shield", "/usr/bin/shield");
    if unit.contains("/usr/local") {
        bail!("deploy/shield.service: a /usr/local path is left after rewriting it for /usr/bin");
    }
    let units = stage.join("systemd");
    std::fs::create_dir_all(&units)?;
    std::fs::write(units.join("shield.service"), unit)?;

    // The Python package for Flask, when this checkout has it: its sources (no caches, no
    // build output, no tests) under /usr/share/shield/shield-flask, for
    // `pip install /usr/share/shield/shield-flask`.
    let flask = root().join("shield-flask");
    let with_flask = flask.join("pyproject.toml").is_file();
    if with_flask {
        step("adding shield-flask/ (under /usr/share/shield/shield-flask)");
        copy_python_sources(&flask, &stage.join("shield-flask"))?;
    } else {
        step("no shield-flask/ in this checkout: the package carries no Python package");
    }

    step("rewriting the docs' links for where the package installs them");
    let doc = stage.join("doc");
    std::fs::create_dir_all(&doc)?;
    for (from, base, to) in [
        ("README.md", "", "README.md"),
        ("docs/operations.md", "docs/", "operations.md"),
    ] {
        let text = std::fs::read_to_string(root().join(from))
            .with_context(|| format!("reading {from}"))?;
        let text = installed_links(&text, base, with_flask).context(from)?;
        std::fs::write(doc.join(to), text)?;
    }

    step("building the Debian package (cargo deb --no-build)");
    let out_dir = root().join("target/debian");
    std::fs::create_dir_all(&out_dir)?;
    let mut c = cargo();
    c.args(["deb", "--package", "shield-user", "--no-build", "--output"])
        .arg(&out_dir);
    if with_flask {
        c.args(["--variant", "with-flask"]);
    }
    let shown = "cargo deb --package shield-user --no-build";
    let out = c
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| {
            format!("cannot start {shown} (cargo xtask bootstrap installs cargo-deb)")
        })?;
    if !out.status.success() {
        bail!("{shown} failed ({})", out.status);
    }
    let deb = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find(|l| l.trim_end().ends_with(".deb"))
        .map(|l| PathBuf::from(l.trim()))
        .context("cargo deb did not print the package's path")?;

    step("lintian (errors fail; warnings are listed in docs/operations.md)");
    run(Command::new("lintian")
        .args(["--fail-on", "error", "--tag-display-limit", "0"])
        .arg(&deb))?;
    Ok(deb)
}

/// Where the package installs a file of the source tree (paths from the root), `None` for
/// what it does not install.
fn installed_path(path: &str, with_flask: bool) -> Option<&'static str> {
    Some(match path {
        "README.md" => "README.md",
        "docs/operations.md" => "operations.md",
        "policy/example.toml" => "example.toml",
        "deploy/grafana/shield.json" => "/usr/share/shield/grafana/shield.json",
        "deploy/prometheus/shield-rules.yml" => "/usr/share/shield/prometheus/shield-rules.yml",
        "shield-flask/README.md" if with_flask => "/usr/share/shield/shield-flask/README.md",
        _ => return None,
    })
}

/// A Markdown file of the source tree (under `base`, e.g. "docs/") as installed in
/// /usr/share/doc/shield: its links to other files point where the package puts them
/// (their text too, when it names the path); a link to a file the package does not install
/// becomes plain text that says where it is. Web links and anchors are kept.
fn installed_links(text: &str, base: &str, with_flask: bool) -> Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("](") {
        let Some(open) = rest[..at].rfind('[') else {
            out.push_str(&rest[..at + 2]);
            rest = &rest[at + 2..];
            continue;
        };
        let Some(close) = rest[at + 2..].find(')') else {
            break;
        };
        let label = &rest[open + 1..at];
        let target = &rest[at + 2..at + 2 + close];
        let after = &rest[at + 3 + close..];
        out.push_str(&rest[..open]);
        rest = after;
        if target.contains("://") || target.starts_with('#') || target.starts_with("mailto:") {
            out.push_str(&format!("[{label}]({target})"));
            continue;
        }
        let (file, anchor) = target.split_once('#').map_or((target, ""), |(f, a)| (f, a));
        // Resolve against `base` (only `../` and plain names occur in our docs).
        let mut dir: Vec<&str> = base.split('/').filter(|p| !p.is_empty()).collect();
        for part in file.split('/') {
            match part {
                ".." => {
                    dir.pop()
                        .with_context(|| format!("link {target} leaves the tree"))?;
                }
                "." | "" => {}
                p => dir.push(p),
            }
        }
        let path = dir.join("/");
        let shown = label.trim_matches('`');
        let named = shown == file || shown == path;
        match installed_path(&path, with_flask) {
            Some(to) => {
                let label = if named {
                    label.replace(shown, to)
                } else {
                    label.to_string()
                };
                let anchor = if anchor.is_empty() {
                    String::new()
                } else {
                    format!("#{anchor}")
                };
                out.push_str(&format!("[{label}]({to}{anchor})"));
            }
            None if named => out.push_str(&format!("{label} (in shield's source tree)")),
            None => out.push_str(&format!("{label} ({path} in shield's source tree)")),
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Copies a Python project's sources: everything but caches, build output, virtualenvs and
/// tests.
fn copy_python_sources(from: &Path, to: &Path) -> Result<()> {
    const SKIP: &[&str] = &[
        "__pycache__",
        ".pytest_cache",
        "build",
        "dist",
        "tests",
        ".venv",
        ".git",
    ];
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let name_s = name.to_string_lossy();
        if SKIP.contains(&name_s.as_ref())
            || name_s.ends_with(".egg-info")
            || name_s.ends_with(".pyc")
            || name_s.starts_with('.')
        {
            continue;
        }
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_python_sources(&entry.path(), &to.join(&name))?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), to.join(&name))
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}
