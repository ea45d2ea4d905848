//! The docs agree with the code: README's emulator flag table, and every test SECURITY.md names.

use std::collections::BTreeMap;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_sendsms-whitelister");
// Compiled in, so a README edit rebuilds and reruns this test.
const README: &str = include_str!("../README.md");
const SECURITY: &str = include_str!("../SECURITY.md");

/// Flag name (`--listen`) to its default (`None` when it has none).
type Flags = BTreeMap<String, Option<String>>;

/// Every long flag `emulator --help` lists, and its `[default: ...]`; `--help` and `--version` aside.
fn help_flags() -> Flags {
    let out = Command::new(BIN)
        .args(["emulator", "--help"])
        .output()
        .expect("run emulator --help");
    assert!(
        out.status.success(),
        "emulator --help exited {}",
        out.status
    );
    let text = String::from_utf8(out.stdout).expect("the help is UTF-8");
    let mut flags = Flags::new();
    let mut current = None;
    for line in text.lines() {
        let body = line.trim_start();
        // An option starts a line indented by at most 6 (`  -h, --help`, `      --listen`);
        // its description and possible values are indented further.
        if (1..=6).contains(&(line.len() - body.len())) && body.starts_with('-') {
            current = body
                .split([' ', ','])
                .find(|w| w.starts_with("--"))
                .filter(|w| !["--help", "--version"].contains(w))
                .map(str::to_owned);
            if let Some(name) = &current {
                flags.insert(name.clone(), None);
            }
        }
        if let (Some(name), Some(at)) = (&current, line.find("[default: ")) {
            let rest = &line[at + "[default: ".len()..];
            let value = &rest[..rest.rfind(']').unwrap_or(rest.len())];
            flags.insert(name.clone(), Some(value.to_owned()));
        }
    }
    assert!(
        !flags.is_empty(),
        "no flag found in emulator --help:\n{text}"
    );
    flags
}

/// The rows of the `| flag | default | meaning |` table under "## The emulator". A row may
/// name several flags (`--username`, `--password`) with one default each, or `none` for all.
fn readme_flags() -> Flags {
    let section = README
        .split("\n## The emulator\n")
        .nth(1)
        .expect("README.md has a section ## The emulator");
    let section = section.split("\n## ").next().unwrap_or(section);
    let rows: Vec<&str> = section
        .lines()
        .skip_while(|l| !l.starts_with("| flag | default |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .collect();
    assert!(
        !rows.is_empty(),
        "no | flag | default | meaning | table under ## The emulator"
    );
    let mut flags = Flags::new();
    for row in rows {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (names, defaults) = (cells[1], cells[2]);
        let names: Vec<&str> = names
            .split(", ")
            .filter_map(|n| n.trim_matches('`').split(' ').next())
            .collect();
        let defaults: Vec<Option<String>> = if defaults == "none" {
            vec![None; names.len()]
        } else {
            defaults
                .split(", ")
                .map(|d| Some(d.trim_matches('`').to_owned()))
                .collect()
        };
        assert_eq!(
            names.len(),
            defaults.len(),
            "README emulator table: one default per flag in {row}"
        );
        for (name, default) in names.into_iter().zip(defaults) {
            assert!(
                name.starts_with("--"),
                "README emulator table: {name:?} in {row}"
            );
            assert!(
                flags.insert(name.to_owned(), default).is_none(),
                "README emulator table: {name} listed twice"
            );
        }
    }
    flags
}

#[test]
fn the_readme_emulator_table_lists_every_flag_of_emulator_help_with_its_default() {
    let help = help_flags();
    let readme = readme_flags();
    let missing: Vec<&String> = help.keys().filter(|f| !readme.contains_key(*f)).collect();
    let stale: Vec<&String> = readme.keys().filter(|f| !help.contains_key(*f)).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "README.md's emulator flag table is out of date: missing {missing:?}, \
         no longer in `emulator --help` {stale:?}"
    );
    let differ: Vec<String> = help
        .iter()
        .filter(|(flag, default)| readme[*flag] != **default)
        .map(|(flag, default)| {
            let shown = |d: &Option<String>| d.clone().unwrap_or_else(|| "none".into());
            format!(
                "{flag}: README {}, --help {}",
                shown(&readme[flag]),
                shown(default)
            )
        })
        .collect();
    assert!(
        differ.is_empty(),
        "README.md's emulator table shows other defaults than `emulator --help`: {differ:?}"
    );
}

/// Where a test SECURITY.md names lives: `file::name` is `fn name` in tests/file.rs,
/// `module::tests::name` (or `testing::properties::name`) is `fn name` in that module's file
/// under src/; `module::tests::*` needs the module to have tests. The error says where it looked.
fn locate(name: &str) -> Result<(), String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let segments: Vec<&str> = name.split("::").collect();
    let (last, modules) = segments.split_last().ok_or("an empty name")?;
    let in_process = modules.contains(&"tests") || modules.first() == Some(&"testing");
    let files: Vec<std::path::PathBuf> = if !in_process && modules.len() == 1 {
        vec![root.join("tests").join(format!("{}.rs", modules[0]))]
    } else {
        // A `tests` module is inline in its parent's file, or a file of its own.
        let parent: Vec<&str> = modules.iter().copied().filter(|m| *m != "tests").collect();
        let parent = parent.join("/");
        vec![
            root.join("src").join(format!("{parent}.rs")),
            root.join("src").join(&parent).join("mod.rs"),
            root.join("src").join(format!("{}.rs", modules.join("/"))),
        ]
    };
    let wanted = if *last == "*" {
        "#[test]".to_owned()
    } else {
        format!("fn {last}(")
    };
    for file in &files {
        let holds =
            |text: String| text.contains(&wanted) || *last == "*" && text.contains("#[tokio::test");
        if std::fs::read_to_string(file).is_ok_and(holds) {
            return Ok(());
        }
    }
    Err(format!("`{name}`: no `{wanted}` in {files:?}"))
}

#[test]
fn every_test_security_md_names_exists_where_its_name_says() {
    // The test column is each table row's last cell; a name is a lower-case path of two or
    // more segments in backquotes (code such as `secret::redact` sits in the defence column).
    let mut named = 0;
    let mut missing = Vec::new();
    for row in SECURITY.lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = row.trim_end_matches('|').split('|').collect();
        let Some(tests) = cells.last() else {
            continue;
        };
        for name in tests.split('`').skip(1).step_by(2) {
            let looks_like_one = name.contains("::")
                && name.starts_with(|c: char| c.is_ascii_lowercase())
                && !name.contains(' ');
            if !looks_like_one {
                continue;
            }
            named += 1;
            let spelled = name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_:*".contains(c));
            let found = if spelled {
                locate(name)
            } else {
                Err(format!("`{name}`: not a whole test name"))
            };
            if let Err(e) = found {
                missing.push(e);
            }
        }
    }
    assert!(
        named > 30,
        "only {named} tests found in SECURITY.md's tables"
    );
    assert!(
        missing.is_empty(),
        "SECURITY.md names tests that do not exist: {missing:#?}"
    );
}
