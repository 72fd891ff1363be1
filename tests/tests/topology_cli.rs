//! The operator's topology commands, run as the real binary: the shipped Guangdong and Jieyang
//! files pass `topology check`, `topology generate` reproduces the shipped Guangdong file, a
//! broken file is refused with file, line and column, and `topology plan` refuses a change
//! that would leave a node without a path.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(credit_e2e::binary())
        .args(args)
        .output()
        .unwrap()
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../topology/examples")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[test]
fn the_shipped_topologies_pass_check() {
    let guangdong = run(&[
        "topology",
        "check",
        examples().join("guangdong.toml").to_str().unwrap(),
    ]);
    assert!(
        guangdong.status.success(),
        "{}",
        String::from_utf8_lossy(&guangdong.stderr)
    );
    assert!(
        stdout(&guangdong)
            .contains("ok — version 1, 145 nodes (21 city, 122 county, 1 national, 1 province)"),
        "{}",
        stdout(&guangdong)
    );
    let jieyang = run(&[
        "topology",
        "check",
        examples().join("jieyang.toml").to_str().unwrap(),
    ]);
    assert!(jieyang.status.success());
    assert!(
        stdout(&jieyang).contains("8 nodes") && stdout(&jieyang).contains("1 legacy link"),
        "{}",
        stdout(&jieyang)
    );
}

#[test]
fn generate_reproduces_the_shipped_guangdong_file() {
    let generated = run(&["topology", "generate", "--province", "440000"]);
    assert!(generated.status.success());
    let shipped = std::fs::read_to_string(examples().join("guangdong.toml")).unwrap();
    assert_eq!(stdout(&generated), shipped);
    let unknown = run(&["topology", "generate", "--province", "990000"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("990000"));
}

#[test]
fn a_broken_file_is_refused_with_every_problem_located() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    let text = std::fs::read_to_string(examples().join("jieyang.toml"))
        .unwrap()
        .replacen("parent = \"440000\"", "parent = \"449900\"", 1)
        .replacen("role = \"county\"", "role = \"countyy\"", 1);
    std::fs::write(&path, &text).unwrap();
    let output = run(&["topology", "check", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let located: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with(path.to_str().unwrap()))
        .collect();
    assert!(
        located.len() >= 2,
        "both problems, each with file:line:column:\n{stderr}"
    );
    assert!(
        stderr.contains("449900") && stderr.contains("countyy"),
        "{stderr}"
    );
}

#[test]
fn plan_prints_steps_and_refuses_a_path_breaking_change() {
    let dir = tempfile::tempdir().unwrap();
    let old = examples().join("jieyang.toml");
    let text = std::fs::read_to_string(&old).unwrap();
    // Migrating Puning's legacy link: four steps, each with its precondition.
    let migrate = dir.path().join("migrate.toml");
    std::fs::write(
        &migrate,
        text.replacen("version = 1", "version = 2", 1).replacen(
            "migrate = false",
            "migrate = true",
            1,
        ),
    )
    .unwrap();
    let plan = run(&[
        "topology",
        "plan",
        old.to_str().unwrap(),
        migrate.to_str().unwrap(),
    ]);
    assert!(
        plan.status.success(),
        "{}",
        String::from_utf8_lossy(&plan.stderr)
    );
    let steps = stdout(&plan);
    for phase in ["establishes", "verifies", "cuts over", "dismantles"] {
        assert!(steps.contains(phase), "{steps}");
    }
    assert_eq!(steps.matches("before:").count(), 4, "{steps}");
    // Same version: refused, exit 1, naming the step.
    let same = dir.path().join("same.toml");
    std::fs::write(&same, text.replacen("migrate = false", "migrate = true", 1)).unwrap();
    let refused = run(&[
        "topology",
        "plan",
        old.to_str().unwrap(),
        same.to_str().unwrap(),
    ]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stdout(&refused).starts_with("refused"),
        "{}",
        stdout(&refused)
    );
}
