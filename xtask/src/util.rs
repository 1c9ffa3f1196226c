//! What every task shares: where things are, and running commands visibly.

use std::{
    env,
    ffi::OsStr,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use anyhow::{Context, bail};

/// The workspace root (this crate's parent directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask sits in the workspace").to_path_buf()
}

/// The workspace's target directory: `CARGO_TARGET_DIR` when set, else `target/`.
pub fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// The cargo that runs us (rustup's default toolchain), else `cargo` on PATH.
pub fn cargo() -> Command {
    let mut cmd = command(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Where `cargo install` puts binaries: `$CARGO_HOME/bin`, else `~/.cargo/bin`.
pub fn cargo_bin_dir() -> Option<PathBuf> {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
        .map(|home| home.join("bin"))
}

/// A command whose PATH also holds the cargo bin dir: rustc finds
/// `bpf-linker` on PATH, and a fresh shell may not have it there.
pub fn command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    if let Some(bin) = cargo_bin_dir() {
        let path = env::var_os("PATH").unwrap_or_default();
        let mut dirs: Vec<PathBuf> = env::split_paths(&path).collect();
        if !dirs.contains(&bin) {
            dirs.push(bin);
            if let Ok(joined) = env::join_paths(dirs) {
                cmd.env("PATH", joined);
            }
        }
    }
    cmd
}

/// A command line as a shell would take it, with the variables we set.
pub fn show(cmd: &Command) -> String {
    let (mut unset, mut set) = (Vec::new(), Vec::new());
    for (key, value) in cmd.get_envs() {
        let key = key.to_string_lossy();
        match value {
            _ if key == "PATH" => {}
            Some(value) => set.push(format!("{key}={}", quote(value))),
            None => unset.push(format!("-u {key}")),
        }
    }
    // `env` takes its options before the assignments.
    let mut words = if unset.is_empty() { Vec::new() } else { [vec!["env".to_owned()], unset].concat() };
    words.extend(set);
    // The cargo `cargo run` hands us is a long toolchain path: say `cargo`.
    let program = cmd.get_program();
    if Path::new(program).file_name() == Some(OsStr::new("cargo")) && env::var_os("CARGO").as_deref() == Some(program) {
        words.push("cargo".into());
    } else {
        words.push(quote(program));
    }
    words.extend(cmd.get_args().map(quote));
    words.join(" ")
}

/// One word, quoted for a shell when it needs it.
pub fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    if !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b)) {
        word.into_owned()
    } else if word.chars().any(char::is_control) {
        // bash's $'...', which spells control characters out.
        let escaped: String = word
            .chars()
            .map(|c| match c {
                '\\' | '\'' => format!("\\{c}"),
                c if c.is_control() => format!("\\x{:02x}", u32::from(c)),
                c => c.to_string(),
            })
            .collect();
        format!("$'{escaped}'")
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Prints the command, runs it with our stdout and stderr, fails on non-zero.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    println!("+ {}", show(cmd));
    let _ = std::io::stdout().flush();
    let status = cmd.status().with_context(|| format!("cannot run {}", cmd.get_program().to_string_lossy()))?;
    if !status.success() {
        bail!("`{}` failed: {status}", show(cmd));
    }
    Ok(())
}

/// Runs the command quietly and returns its output, whatever its status;
/// an error only when it cannot be started.
pub fn probe(cmd: &mut Command) -> anyhow::Result<Output> {
    cmd.stdin(Stdio::null()).output().with_context(|| format!("cannot run {}", cmd.get_program().to_string_lossy()))
}

/// Runs the command quietly and returns its stdout, failing on non-zero.
pub fn stdout_of(cmd: &mut Command) -> anyhow::Result<String> {
    let output = probe(cmd)?;
    if !output.status.success() {
        bail!("`{}` failed: {}\n{}", show(cmd), output.status, String::from_utf8_lossy(&output.stderr).trim_end());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs the command quietly with `input` on its stdin and returns its
/// stdout, failing on non-zero.
pub fn stdout_with_input(cmd: &mut Command, input: &[u8]) -> anyhow::Result<String> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    child.stdin.take().expect("piped stdin").write_all(input)?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!("`{}` failed: {}\n{}", show(cmd), output.status, String::from_utf8_lossy(&output.stderr).trim_end());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// True when we run as root.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|line| line.starts_with("Uid:"))?;
            // Uid: real effective saved filesystem
            line.split_whitespace().nth(2).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

/// Fails with a clear message unless we run as root.
pub fn require_root(what: &str) -> anyhow::Result<()> {
    if !is_root() {
        bail!("{what} needs root; run again as root (e.g. `sudo -E cargo xtask ...`)");
    }
    Ok(())
}

/// Makes `link` a symlink to `target`, replacing a wrong one; true when it changed anything.
pub fn ensure_symlink(target: &Path, link: &Path) -> anyhow::Result<bool> {
    if std::fs::read_link(link).is_ok_and(|current| current == target) {
        return Ok(false);
    }
    if std::fs::symlink_metadata(link).is_ok() {
        std::fs::remove_file(link).with_context(|| format!("removing {}", link.display()))?;
    }
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("linking {} -> {}", link.display(), target.display()))?;
    Ok(true)
}
