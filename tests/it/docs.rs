//! The documentation against the program and the repository: docs/cli.md is what `--help`
//! prints (so the flag reference cannot drift from the binary), every relative link of the
//! Markdown files leads to a file of the repository, and nothing tracked refers to a file
//! outside it.

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use wsscale::config::Cli;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// docs/cli.md as the program renders it: every command's long help, in the order
/// `wsscale help` lists them.
fn cli_reference() -> String {
    let mut out = String::from(
        "# Command-line reference\n\n\
         Generated from the program itself (`wsscale <command> --help`); \
         `WSSCALE_BLESS=1 cargo test --test it docs::` rewrites it, and the test fails \
         while it differs from the binary.\n",
    );
    let mut command = Cli::command().term_width(100);
    command.build();
    render(&mut command, &mut Vec::new(), &mut out);
    out
}

fn render(command: &mut clap::Command, path: &mut Vec<String>, out: &mut String) {
    path.push(command.get_name().to_owned());
    if command.get_name() != "help" {
        let heading = "#".repeat(path.len().min(3) + 1);
        out.push_str(&format!("\n{heading} `{}`\n\n```text\n", path.join(" ")));
        let help = command.render_long_help().to_string();
        let lines: Vec<&str> = help.trim_end().lines().map(str::trim_end).collect();
        out.push_str(&lines.join("\n"));
        out.push_str("\n```\n");
        for sub in command.get_subcommands_mut() {
            render(sub, path, out);
        }
    }
    path.pop();
}

#[test]
fn cli_reference_is_what_help_prints() {
    let path = root().join("docs/cli.md");
    let wanted = cli_reference();
    if std::env::var_os("WSSCALE_BLESS").is_some() {
        std::fs::write(&path, &wanted).unwrap();
    }
    let written = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        written == wanted,
        "docs/cli.md differs from --help: run `WSSCALE_BLESS=1 cargo test --test it docs::` and commit it"
    );
    // The reference names every command and flag that matters to a reader.
    for wanted in [
        "## `wsscale serve`",
        "## `wsscale load`",
        "## `wsscale compare`",
        "--tls-cert",
        "--schemes",
    ] {
        assert!(written.contains(wanted), "docs/cli.md has no {wanted}");
    }
}

/// The repository's files as git tracks them (and the new ones not yet added).
fn repository_files() -> Vec<PathBuf> {
    let output = std::process::Command::new("git")
        .args(["ls-files", "--cached", "--others", "--exclude-standard"])
        .current_dir(root())
        .output()
        .expect("git");
    assert!(output.status.success());
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| root().join(line))
        .filter(|path| path.is_file())
        .collect()
}

#[test]
fn every_relative_link_leads_to_a_file() {
    let link = |text: &str| -> Vec<String> {
        // `](target)` of Markdown links and images.
        text.split("](")
            .skip(1)
            .filter_map(|rest| rest.split_once(')').map(|(target, _)| target.to_owned()))
            .collect()
    };
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in repository_files()
        .into_iter()
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .filter(|path| {
            !path
                .components()
                .any(|c| c.as_os_str() == "node_modules" || c.as_os_str() == "vendor")
        })
    {
        let text = std::fs::read_to_string(&file).unwrap();
        for target in link(&text) {
            let target = target.split_whitespace().next().unwrap_or_default();
            let path = target.split('#').next().unwrap();
            if path.is_empty() || path.contains("://") || path.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            if !file.parent().unwrap().join(path).exists() {
                broken.push(format!("{}: {target}", file.strip_prefix(root()).unwrap().display()));
            }
        }
    }
    assert!(checked > 20, "only {checked} links found: is the scan broken?");
    assert!(broken.is_empty(), "links to nothing:\n{}", broken.join("\n"));
}

#[test]
fn nothing_refers_to_a_file_outside_the_repository() {
    // The notes of the machine this project was first built on (a folder beside the
    // repository, and the two files in it): spelled in parts, so that this file does not
    // itself name them.
    let outside: Vec<String> = [["..", "/shared"], ["FACTS", ".md"], ["STYLE", ".md"]]
        .iter()
        .map(|parts| parts.concat())
        .collect();
    let mut found = Vec::new();
    for file in repository_files() {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for name in &outside {
            if text.contains(name.as_str()) {
                found.push(format!("{}: {name}", file.strip_prefix(root()).unwrap().display()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "references outside the repository:\n{}",
        found.join("\n")
    );
}
