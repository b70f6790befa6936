//! Shared by the tests/backup_*.rs binaries: drive the real audctl binary, write targets files.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use audctl_targets::Targets;

pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr))
    }

    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(self.code, Some(0), "audctl failed:\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }
}

pub fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_audctl"));
    cmd.args(args)
        .env_remove("KUBECONFIG")
        .env_remove("AUDCTL_TARGETS")
        .env_remove("PGPASSWORD")
        .env_remove("NO_COLOR");
    cmd
}

/// Run audctl to completion (blocking; call from spawn_blocking in async tests, or use `audctl`).
pub fn run(args: &[&str]) -> Run {
    let out: Output = command(args).output().expect("audctl runs");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub async fn audctl(args: &[&str]) -> Run {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&refs)
    })
    .await
    .expect("audctl task")
}

/// Write `targets` as YAML into `dir/targets.yaml`.
pub fn targets_file(dir: &Path, targets: &Targets) -> PathBuf {
    let path = dir.join("targets.yaml");
    std::fs::write(&path, targets.to_yaml().expect("targets serialise")).expect("write targets");
    path
}

/// `sha256sum FILE`: an independent reference for the manifest's checksums.
pub fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().expect("sha256sum runs");
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_owned()
}
