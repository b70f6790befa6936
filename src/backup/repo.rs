//! The backup repository: where backups live, how they are written so that an interrupted backup
//! never looks complete, and the catalog of their manifests.
//!
//! Layout (see the README):
//!
//! ```text
//! REPO/
//!   postgres/<id>/manifest.json    complete backups: the manifest is written last, then the whole
//!   postgres/<id>/dump/<db>.dump   directory is renamed from .partial/ into place
//!   search/<id>/...  redis/<id>/...  kafka/<id>/...
//!   .partial/<id>/                 a backup being written, or one that was interrupted
//! ```
//!
//! Inside `.partial/<id>/`, each file is written under `<name>.tmp`, flushed to disk, then renamed;
//! its size and sha256 are computed while it is written. The manifest lists every file. Only a
//! directory under `<component>/` with a `manifest.json` is a backup.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::Component;
use super::manifest::{FileEntry, Manifest};
use super::progress::Bytes;
use crate::error::usage;

const PARTIAL: &str = ".partial";
pub const MANIFEST: &str = "manifest.json";
/// Result of the last `backup verify` of a backup, next to its manifest.
pub const VERIFIED: &str = "verified.json";

/// Where backups are kept. Only a directory today; an object store would be another variant, so
/// everything outside this file goes through [`Repo`]'s methods, never through paths it computes.
#[derive(Debug, Clone)]
pub enum Location {
    Dir(PathBuf),
}

#[derive(Debug, Clone)]
pub struct Repo {
    location: Location,
}

/// A complete backup found in the repository.
#[derive(Debug, Clone)]
pub struct Stored {
    pub manifest: Manifest,
    pub dir: PathBuf,
    /// When `backup verify` last passed on it, if ever.
    pub verified: Option<DateTime<Utc>>,
}

impl Repo {
    /// `--repo DIR` wins over `backup.repo` in the targets file.
    pub fn resolve(flag: Option<&Path>, targets: Option<&audctl_targets::Targets>) -> anyhow::Result<Repo> {
        let dir = match (flag, targets.and_then(|t| t.backup.as_ref())) {
            (Some(dir), _) => dir.to_owned(),
            (None, Some(b)) => b.repo.clone(),
            (None, None) => {
                return Err(usage("no backup repository: pass --repo DIR or set backup.repo in the targets file"));
            }
        };
        Ok(Repo { location: Location::Dir(dir) })
    }

    pub fn dir(dir: impl Into<PathBuf>) -> Repo {
        Repo { location: Location::Dir(dir.into()) }
    }

    pub fn display(&self) -> String {
        match &self.location {
            Location::Dir(d) => d.display().to_string(),
        }
    }

    fn root(&self) -> &Path {
        match &self.location {
            Location::Dir(d) => d,
        }
    }

    /// Start a new backup of `component`: a fresh id and its `.partial/<id>/` directory.
    pub fn begin(&self, component: Component, started: DateTime<Utc>) -> anyhow::Result<Staging> {
        let root = self.root();
        std::fs::create_dir_all(root.join(PARTIAL))
            .with_context(|| format!("creating the backup repository {}", root.display()))?;
        let stamp = started.format("%Y%m%dT%H%M%SZ");
        for n in 0..1000 {
            let id = if n == 0 { format!("{component}-{stamp}") } else { format!("{component}-{stamp}-{n}") };
            let dir = root.join(PARTIAL).join(&id);
            if root.join(component.as_str()).join(&id).exists() {
                continue;
            }
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    return Ok(Staging {
                        id,
                        component,
                        dir,
                        final_dir: root.join(component.as_str()),
                        files: Vec::new(),
                        committed: false,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
            }
        }
        bail!("could not find a free backup id for {component} at {stamp}")
    }

    /// Every complete, readable backup, newest first (optionally of one component). A damaged one
    /// (unreadable or inconsistent manifest) is left out with a warning on stderr, so one bad
    /// directory never blocks the backups, restores and reports of the others; [`Repo::damaged`]
    /// lists them.
    pub fn list(&self, component: Option<Component>) -> anyhow::Result<Vec<Stored>> {
        let (mut all, damaged) = self.scan(component)?;
        for d in &damaged {
            warn_damaged(d);
        }
        all.sort_by(|a, b| b.manifest.finished.cmp(&a.manifest.finished).then(b.manifest.id.cmp(&a.manifest.id)));
        Ok(all)
    }

    /// Backups whose manifest cannot be trusted: never restorable, never the latest.
    pub fn damaged(&self, component: Option<Component>) -> anyhow::Result<Vec<Damaged>> {
        let (_, mut damaged) = self.scan(component)?;
        damaged.sort_by(|a, b| a.component.cmp(&b.component).then(a.id.cmp(&b.id)));
        Ok(damaged)
    }

    /// Fail with a usage error when the repository directory does not exist: reading from a
    /// mistyped `--repo` must not look like "no backups" (only `backup` creates it).
    pub fn require_exists(&self) -> anyhow::Result<()> {
        let root = self.root();
        if root.is_dir() {
            Ok(())
        } else if root.exists() {
            Err(usage(format!("backup repository {}: not a directory", root.display())))
        } else {
            Err(usage(format!(
                "backup repository {} does not exist (check --repo or backup.repo; `audctl backup` creates it)",
                root.display()
            )))
        }
    }

    fn scan(&self, component: Option<Component>) -> anyhow::Result<(Vec<Stored>, Vec<Damaged>)> {
        let (mut good, mut damaged) = (Vec::new(), Vec::new());
        let root = self.root();
        if !root.exists() {
            return Ok((good, damaged));
        }
        for c in Component::ALL {
            if component.is_some_and(|only| only != c) {
                continue;
            }
            let dir = root.join(c.as_str());
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries {
                let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
                let path = entry.path();
                if !path.join(MANIFEST).is_file() {
                    continue;
                }
                match load(&path, c) {
                    Ok(stored) => good.push(stored),
                    Err(reason) => damaged.push(Damaged {
                        id: entry.file_name().to_string_lossy().into_owned(),
                        component: c,
                        dir: path,
                        reason,
                    }),
                }
            }
        }
        Ok((good, damaged))
    }

    /// Ids of backups that started and never completed (interrupted, or running now).
    pub fn partial(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.root().join(PARTIAL)) else { return Vec::new() };
        let mut ids: Vec<String> =
            entries.flatten().filter_map(|e| e.file_name().to_str().map(str::to_owned)).collect();
        ids.sort();
        ids
    }

    /// The backup `id` (or the newest of `component` for `latest`).
    pub fn open(&self, id: &str, component: Component) -> anyhow::Result<Stored> {
        if id == "latest" {
            return self
                .list(Some(component))?
                .into_iter()
                .next()
                .ok_or_else(|| usage(format!("no complete {component} backup in {}", self.display())));
        }
        if id.is_empty() || id.contains(['/', '\\']) || id.starts_with('.') {
            return Err(usage(format!("backup id {id:?}: expected an id as `audctl backup list` shows it")));
        }
        for c in Component::ALL {
            let dir = self.root().join(c.as_str()).join(id);
            if dir.join(MANIFEST).is_file() {
                let stored = load(&dir, c).map_err(|reason| {
                    usage(format!(
                        "backup {id} is damaged ({reason}): it cannot be restored; `audctl backup list` shows the \
                         usable ones"
                    ))
                })?;
                if c != component {
                    return Err(usage(format!(
                        "backup {id} is a {c} backup, not a {component} one: use `audctl restore {c} {id}`"
                    )));
                }
                return Ok(stored);
            }
        }
        if self.partial().iter().any(|p| p == id) {
            return Err(usage(format!(
                "backup {id} is incomplete (interrupted or still running): it cannot be restored; \
                 `audctl backup list` shows the complete ones"
            )));
        }
        Err(usage(format!("no backup {id} in {} (see `audctl backup list`)", self.display())))
    }

    /// The complete backup `id`, whatever its component.
    pub fn find(&self, id: &str) -> anyhow::Result<Stored> {
        for c in Component::ALL {
            if self.root().join(c.as_str()).join(id).join(MANIFEST).is_file() {
                return self.open(id, c);
            }
        }
        self.open(id, Component::Postgres)
    }

    /// Interrupted backups with their last modification time.
    pub fn partial_ages(&self) -> Vec<(String, Option<std::time::SystemTime>)> {
        self.partial()
            .into_iter()
            .map(|id| {
                let t = std::fs::metadata(self.root().join(PARTIAL).join(&id)).and_then(|m| m.modified()).ok();
                (id, t)
            })
            .collect()
    }

    /// Record that `backup verify` passed on `stored` now.
    pub fn mark_verified(
        &self,
        stored: &Stored,
        when: DateTime<Utc>,
        summary: &serde_json::Value,
    ) -> anyhow::Result<()> {
        let body = serde_json::json!({"verified": when, "summary": summary});
        write_atomically(&stored.dir.join(VERIFIED), serde_json::to_vec_pretty(&body)?.as_slice())
    }

    /// Delete a complete backup: first renamed out of the catalog, then removed.
    pub fn remove(&self, stored: &Stored) -> anyhow::Result<()> {
        let trash = self.root().join(PARTIAL).join(format!("deleting-{}", stored.manifest.id));
        std::fs::rename(&stored.dir, &trash)
            .with_context(|| format!("moving {} out of the catalog", stored.dir.display()))?;
        std::fs::remove_dir_all(&trash).with_context(|| format!("removing {}", trash.display()))
    }

    /// Remove an interrupted backup's directory.
    pub fn remove_partial(&self, id: &str) -> anyhow::Result<()> {
        let dir = self.root().join(PARTIAL).join(id);
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))
    }
}

/// A backup directory whose manifest cannot be trusted, and why.
#[derive(Debug, Clone)]
pub struct Damaged {
    /// The directory's name (the manifest's own id may be unreadable or different).
    pub id: String,
    /// The directory it is under.
    pub component: Component,
    pub dir: PathBuf,
    pub reason: String,
}

/// Warn once per process about a damaged backup: `list` is called several times by some verbs.
fn warn_damaged(d: &Damaged) {
    use std::sync::Mutex;
    static WARNED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
    if !warned.contains(&d.dir) {
        warned.push(d.dir.clone());
        eprintln!("warning: skipping damaged backup {} ({}): {}", d.id, d.dir.display(), d.reason);
    }
}

/// Read and validate the manifest of the backup in `dir`, found under `component/`. The error is
/// the reason the backup is damaged.
fn load(dir: &Path, component: Component) -> Result<Stored, String> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read(&path).map_err(|e| format!("{MANIFEST} unreadable: {e}"))?;
    let manifest: Manifest =
        serde_json::from_slice(&text).map_err(|e| format!("{MANIFEST} is not a valid backup manifest: {e}"))?;
    validate(&manifest, dir, component)?;
    let verified = std::fs::read(dir.join(VERIFIED))
        .ok()
        .and_then(|t| serde_json::from_slice::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("verified").and_then(|w| serde_json::from_value(w.clone()).ok()));
    Ok(Stored { manifest, dir: dir.to_owned(), verified })
}

/// A manifest that parses but does not describe the directory it is in (copied or renamed by hand,
/// written by a newer audctl) would restore the wrong thing or be misread: it is damaged.
fn validate(m: &Manifest, dir: &Path, component: Component) -> Result<(), String> {
    if m.format != super::manifest::FORMAT {
        return Err(format!(
            "manifest format {} is unknown (this audctl reads format {})",
            m.format,
            super::manifest::FORMAT
        ));
    }
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if m.id != name {
        return Err(format!("manifest id {:?} does not match its directory {name:?}", m.id));
    }
    if m.component != component {
        return Err(format!("manifest component {} does not match its directory {component}/", m.component));
    }
    for f in &m.files {
        let p = Path::new(&f.path);
        if f.path.is_empty() || p.is_absolute() || p.components().any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(format!("manifest lists a file outside the backup: {:?}", f.path));
        }
    }
    Ok(())
}

/// A backup being written. Dropped without [`Staging::commit`], it removes its directory (a
/// failed backup leaves nothing); killed, it leaves `.partial/<id>/`, which is never listed.
pub struct Staging {
    pub id: String,
    pub component: Component,
    dir: PathBuf,
    final_dir: PathBuf,
    files: Vec<FileEntry>,
    committed: bool,
}

impl Staging {
    /// Absolute path of a file of this backup, for tools that write it themselves.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Copy `reader` into `rel` (under a temporary name, renamed when complete), hashing as it goes.
    pub fn write_from(&mut self, rel: &str, reader: &mut dyn Read, progress: &Bytes) -> anyhow::Result<FileEntry> {
        let path = self.dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let tmp = tmp_name(&path);
        let (size, sha256) = copy_hashing(reader, &tmp, progress).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming {} into place", tmp.display()))?;
        let entry = FileEntry { path: rel.to_owned(), size, sha256 };
        self.files.push(entry.clone());
        Ok(entry)
    }

    /// Record a file a tool wrote into the staging directory: its size and sha256 are read back.
    pub fn add_written(&mut self, rel: &str, progress: &Bytes) -> anyhow::Result<FileEntry> {
        let path = self.dir.join(rel);
        let (size, sha256) = hash_file(&path, progress)?;
        // Tools do not always fsync (pg_basebackup does): make sure it is on disk before the manifest.
        File::open(&path).and_then(|f| f.sync_all()).with_context(|| format!("syncing {}", path.display()))?;
        let entry = FileEntry { path: rel.to_owned(), size, sha256 };
        self.files.push(entry.clone());
        Ok(entry)
    }

    /// Write small in-memory content as `rel`.
    pub fn write_bytes(&mut self, rel: &str, bytes: &[u8]) -> anyhow::Result<FileEntry> {
        self.write_from(rel, &mut &bytes[..], &Bytes::hidden())
    }

    /// A streaming writer for `rel` (temporary name until [`HashingFile::finish`]).
    pub fn create(&mut self, rel: &str) -> anyhow::Result<HashingFile> {
        let path = self.dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let tmp = tmp_name(&path);
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        Ok(HashingFile {
            rel: rel.to_owned(),
            path,
            tmp,
            out: BufWriter::with_capacity(1 << 20, file),
            sha: Sha256::new(),
            size: 0,
        })
    }

    /// Record a file finished with [`HashingFile::finish`].
    pub fn add(&mut self, entry: FileEntry) {
        self.files.push(entry);
    }

    pub fn files(&self) -> &[FileEntry] {
        &self.files
    }

    /// Write the manifest, then move the backup into the catalog in one rename.
    pub fn commit(mut self, manifest: &Manifest) -> anyhow::Result<PathBuf> {
        let text = serde_json::to_vec_pretty(manifest)?;
        write_atomically(&self.dir.join(MANIFEST), &text)?;
        sync_dir(&self.dir)?;
        std::fs::create_dir_all(&self.final_dir).with_context(|| format!("creating {}", self.final_dir.display()))?;
        let target = self.final_dir.join(&self.id);
        std::fs::rename(&self.dir, &target)
            .with_context(|| format!("moving {} to {}", self.dir.display(), target.display()))?;
        sync_dir(&self.final_dir)?;
        self.committed = true;
        Ok(target)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A file of a backup being streamed: hashed as written, renamed into place when finished.
pub struct HashingFile {
    rel: String,
    path: PathBuf,
    tmp: PathBuf,
    out: BufWriter<File>,
    sha: Sha256,
    size: u64,
}

impl HashingFile {
    pub fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.sha.update(bytes);
        self.size += bytes.len() as u64;
        self.out.write_all(bytes).with_context(|| format!("writing {}", self.tmp.display()))
    }

    pub fn finish(self) -> anyhow::Result<FileEntry> {
        let HashingFile { rel, path, tmp, out, sha, size } = self;
        let file =
            out.into_inner().map_err(|e| e.into_error()).with_context(|| format!("writing {}", tmp.display()))?;
        file.sync_all().with_context(|| format!("syncing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming {} into place", tmp.display()))?;
        Ok(FileEntry { path: rel, size, sha256: hex::encode(sha.finalize()) })
    }
}

fn tmp_name(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

fn copy_hashing(reader: &mut dyn Read, to: &Path, progress: &Bytes) -> anyhow::Result<(u64, String)> {
    let file = File::create(to).with_context(|| format!("creating {}", to.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("reading the backup stream"),
        };
        sha.update(&buf[..n]);
        out.write_all(&buf[..n]).with_context(|| format!("writing {}", to.display()))?;
        size += n as u64;
        progress.add(n as u64);
    }
    let file = out.into_inner().map_err(|e| e.into_error()).with_context(|| format!("writing {}", to.display()))?;
    file.sync_all().with_context(|| format!("syncing {}", to.display()))?;
    Ok((size, hex::encode(sha.finalize())))
}

/// Size and sha256 of a file.
pub fn hash_file(path: &Path, progress: &Bytes) -> anyhow::Result<(u64, String)> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        sha.update(&buf[..n]);
        size += n as u64;
        progress.add(n as u64);
    }
    Ok((size, hex::encode(sha.finalize())))
}

/// Write a small file under a temporary name, sync it, rename it into place.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = tmp_name(path);
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir).and_then(|f| f.sync_all()).with_context(|| format!("syncing directory {}", dir.display()))
}

/// Check every listed file of `stored` against its manifest (size first, then sha256). The error
/// names the first bad file and what is wrong with it.
pub fn verify_files(stored: &Stored, only: impl Fn(&FileEntry) -> bool, progress: &Bytes) -> anyhow::Result<u64> {
    let mut checked = 0u64;
    for entry in stored.manifest.files.iter().filter(|e| only(e)) {
        let path = stored.dir.join(&entry.path);
        let id = &stored.manifest.id;
        let meta = std::fs::metadata(&path)
            .map_err(|e| anyhow::anyhow!("backup {id}: file {} is missing or unreadable: {e}", entry.path))?;
        if meta.len() != entry.size {
            bail!(
                "backup {id}: file {} is {} bytes, the manifest says {} ({}): refusing to restore from it",
                entry.path,
                meta.len(),
                entry.size,
                if meta.len() < entry.size { "truncated" } else { "altered" }
            );
        }
        let (_, sha) = hash_file(&path, progress)?;
        if sha != entry.sha256 {
            bail!(
                "backup {id}: file {} is corrupted (sha256 {sha}, the manifest says {}): refusing to restore from it",
                entry.path,
                entry.sha256
            );
        }
        checked += 1;
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::manifest::Manifest;

    fn manifest(id: &str, files: Vec<FileEntry>) -> Manifest {
        let now = Utc::now();
        Manifest::new(
            id.to_owned(),
            Component::Postgres,
            now,
            now,
            files,
            "15.0".into(),
            "x".into(),
            serde_json::json!({}),
        )
    }

    #[test]
    fn interrupted_backups_are_never_listed_and_checksums_name_the_file() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let repo = Repo::dir(dir.path());
        let quiet = Bytes::hidden();
        // An interrupted one: files written, never committed (forgotten as a kill would leave it).
        let mut s = repo.begin(Component::Postgres, Utc::now())?;
        s.write_from("dump/a.dump", &mut &b"hello"[..], &quiet)?;
        let partial_id = s.id.clone();
        std::mem::forget(s);
        assert!(repo.list(None)?.is_empty());
        assert_eq!(repo.partial(), vec![partial_id.clone()]);
        assert!(repo.open(&partial_id, Component::Postgres).unwrap_err().to_string().contains("incomplete"));

        let mut s = repo.begin(Component::Postgres, Utc::now())?;
        let e = s.write_from("dump/a.dump", &mut &b"hello"[..], &quiet)?;
        // sha256("hello"), from `printf hello | sha256sum`.
        assert_eq!(e.sha256, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        let id = s.id.clone();
        s.commit(&manifest(&id, vec![e]))?;
        let stored = repo.open(&id, Component::Postgres)?;
        assert_eq!(verify_files(&stored, |_| true, &quiet)?, 1);
        std::fs::write(stored.dir.join("dump/a.dump"), b"hellO")?;
        let err = verify_files(&stored, |_| true, &quiet).unwrap_err().to_string();
        assert!(err.contains("dump/a.dump") && err.contains("corrupted"), "{err}");
        std::fs::write(stored.dir.join("dump/a.dump"), b"hel")?;
        let err = verify_files(&stored, |_| true, &quiet).unwrap_err().to_string();
        assert!(err.contains("dump/a.dump") && err.contains("truncated"), "{err}");
        Ok(())
    }

    /// Commit one small postgres backup; its id.
    fn committed(repo: &Repo) -> anyhow::Result<Stored> {
        let mut s = repo.begin(Component::Postgres, Utc::now())?;
        let e = s.write_from("dump/a.dump", &mut &b"hello"[..], &Bytes::hidden())?;
        let id = s.id.clone();
        s.commit(&manifest(&id, vec![e]))?;
        repo.open(&id, Component::Postgres)
    }

    #[test]
    fn a_damaged_manifest_is_skipped_and_reported_with_its_reason() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let repo = Repo::dir(dir.path());
        let good = committed(&repo)?;
        let pg = dir.path().join("postgres");
        let damage = |name: &str, text: &str| -> anyhow::Result<()> {
            std::fs::create_dir_all(pg.join(name))?;
            std::fs::write(pg.join(name).join(MANIFEST), text)?;
            Ok(())
        };
        let valid = std::fs::read_to_string(good.dir.join(MANIFEST))?;
        let mut v: serde_json::Value = serde_json::from_str(&valid)?;
        damage("postgres-29990101T000000Z", r#"{"format":1,"id":"x""#)?;
        v["id"] = "postgres-29990102T000000Z".into();
        v["format"] = 99.into();
        damage("postgres-29990102T000000Z", &v.to_string())?;
        v["format"] = 1.into();
        v["id"] = "someone-else".into();
        damage("postgres-29990103T000000Z", &v.to_string())?;
        v["id"] = "postgres-29990104T000000Z".into();
        v["component"] = "redis".into();
        damage("postgres-29990104T000000Z", &v.to_string())?;

        let listed = repo.list(Some(Component::Postgres))?;
        assert_eq!(listed.iter().map(|b| b.manifest.id.clone()).collect::<Vec<_>>(), vec![good.manifest.id.clone()]);
        assert_eq!(repo.open("latest", Component::Postgres)?.manifest.id, good.manifest.id);
        let damaged = repo.damaged(None)?;
        let reasons: Vec<(&str, &str)> = damaged.iter().map(|d| (d.id.as_str(), d.reason.as_str())).collect();
        assert_eq!(reasons.len(), 4, "{reasons:?}");
        assert!(reasons[0].1.contains("not a valid backup manifest"), "{reasons:?}");
        assert!(reasons[1].1.contains("format 99 is unknown"), "{reasons:?}");
        assert!(reasons[2].1.contains("does not match its directory"), "{reasons:?}");
        assert!(reasons[3].1.contains("component redis does not match"), "{reasons:?}");
        let err = repo.open("postgres-29990101T000000Z", Component::Postgres).unwrap_err();
        assert_eq!(crate::error::Failure::classify(&err), crate::error::Failure::Usage);
        assert!(err.to_string().contains("damaged"), "{err}");
        Ok(())
    }

    #[test]
    fn a_missing_repository_is_a_usage_error() {
        let err = Repo::dir("/nonexistent/audctl-repo").require_exists().unwrap_err();
        assert_eq!(crate::error::Failure::classify(&err), crate::error::Failure::Usage);
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}
