//! The secret files of a worker's tasks: `<secrets-dir>/<service>.<slot>/<target>`, each
//! written atomically (a temporary file in the same directory, owner and mode set, then a
//! rename), so a reader sees the old value or the new one, never a torn one; a rotation
//! replaces the file in place and running services see it without a restart.
//!
//! Must never: write a value outside the secrets dir (targets are checked again here, after
//! the manager did), leave a temporary file holding a value after a failed write, or keep
//! a file of a reference the task no longer has.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use base64::Engine;
use coffer_api::worker::{AssignedTask, Redeemed};
use zeroize::Zeroizing;

/// The secrets dir: anyone may pass through it to their own task's directory; nobody but
/// the worker may list it.
const SECRETS_ROOT_MODE: u32 = 0o711;

/// Refuses a secrets dir that is not in memory (tmpfs or ramfs), unless told otherwise, and
/// makes it mode 0711.
pub fn check_in_memory(dir: &Path, insecure_disk: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let canonical = dir.canonicalize()?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").context("read /proc/self/mountinfo")?;
    let mut best: Option<(usize, String)> = None;
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(mount), Some(sep)) = (fields.get(4), fields.iter().position(|f| *f == "-")) else { continue };
        let Some(fstype) = fields.get(sep + 1) else { continue };
        let mount = mount.replace("\\040", " ");
        if canonical.starts_with(&mount) && best.as_ref().is_none_or(|(len, _)| mount.len() >= *len) {
            best = Some((mount.len(), fstype.to_string()));
        }
    }
    check_owned(dir)?;
    // Others may pass through to the task directory that is theirs, never list what is here.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(SECRETS_ROOT_MODE))
        .with_context(|| format!("make {} mode {SECRETS_ROOT_MODE:o}", dir.display()))?;
    let fstype = best.map(|(_, t)| t).unwrap_or_default();
    if fstype == "tmpfs" || fstype == "ramfs" {
        return Ok(());
    }
    if insecure_disk {
        tracing::warn!(dir = %dir.display(), %fstype, "secrets dir is on disk (--insecure-disk): values will touch persistent storage");
        return Ok(());
    }
    bail!(
        "{} is on {fstype}, not in memory: mount a tmpfs there (mount -t tmpfs -o mode=0711 tmpfs {}) \
         or pass --insecure-disk",
        dir.display(),
        dir.display()
    )
}

/// Refuses a secrets dir that someone else could tamper with: a symbolic link, a directory
/// owned by another user, or one inside a directory others may write to without the sticky
/// bit (they could rename it away and put their own in its place).
fn check_owned(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let me = std::fs::metadata("/proc/self").context("read /proc/self")?.uid();
    let meta = std::fs::symlink_metadata(dir).with_context(|| format!("stat {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory (a symbolic link?): refusing it as the secrets dir", dir.display());
    }
    if meta.uid() != me {
        bail!("{} belongs to uid {}, not to this worker (uid {me}): refusing it", dir.display(), meta.uid());
    }
    if let Some(parent) = dir.canonicalize()?.parent() {
        let p = std::fs::metadata(parent).with_context(|| format!("stat {}", parent.display()))?;
        let others_write = p.mode() & 0o022 != 0;
        let sticky = p.mode() & 0o1000 != 0;
        if (p.uid() != me && p.uid() != 0) || (others_write && !sticky) {
            bail!(
                "{} is inside {}, which others may change: put the secrets dir where only this worker can",
                dir.display(),
                parent.display()
            );
        }
    }
    Ok(())
}

pub(crate) fn remove_task_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("remove {}", dir.display())),
    }
}

/// Removes a temporary file unless it was renamed into place: a failed write (chown as a
/// non-root user, a full tmpfs) must not leave a value lying in the secrets dir.
struct TmpFile(Option<PathBuf>);

impl Drop for TmpFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Writes every secret of `task` into `dir`, atomically per file, and returns `task` with
/// the versions written. Files of references the task no longer has are removed first (a
/// target may become a directory of a new one).
///
/// A redemption returns the versions the task references when it is redeemed, which may
/// be newer than those of the assignment this worker holds (a rotation committed since):
/// values are matched by secret, and the version redeemed is the one written. A secret of
/// the assignment that the redemption lacks (its reference was dropped since) fails the
/// whole task before anything is written; the next assignment no longer has it.
pub(crate) fn write_task(
    dir: &Path,
    task: &AssignedTask,
    redeemed: &Redeemed,
    old_targets: &BTreeSet<String>,
) -> anyhow::Result<AssignedTask> {
    let mut written = task.clone();
    for s in &mut written.secrets {
        let value =
            redeemed.secrets.iter().find(|r| r.secret_id == s.secret_id).with_context(|| {
                format!("the redemption lacks secret {} (its reference was dropped)", s.secret_name)
            })?;
        s.version = value.version;
    }
    let now: BTreeSet<&str> = task.secrets.iter().map(|s| s.target.as_str()).collect();
    for t in old_targets.iter().filter(|t| !now.contains(t.as_str())) {
        let _ = std::fs::remove_file(dir.join(t));
    }
    // The task directory is ours alone: any other file in it (a target dropped while this
    // worker was away, a temporary file of a crash) goes too.
    remove_unlisted(dir, dir, &now);
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let access = DirAccess::of(task);
    access.apply(dir)?;
    let b64 = base64::engine::general_purpose::STANDARD;
    for s in &written.secrets {
        let value = redeemed
            .secrets
            .iter()
            .find(|r| r.secret_id == s.secret_id)
            .with_context(|| format!("the redemption lacks secret {}", s.secret_name))?;
        let bytes = Zeroizing::new(b64.decode(&value.data).context("redeemed value is not base64")?);
        // Targets are validated by the manager; check again before touching the disk.
        if s.target.split('/').any(|p| p.is_empty() || p == "." || p == "..") || s.target.starts_with('/') {
            bail!("refusing target {:?}", s.target);
        }
        let path = dir.join(&s.target);
        let parent = path.parent().unwrap_or(dir);
        std::fs::create_dir_all(parent)?;
        let mut sub = parent;
        while sub != dir && sub.starts_with(dir) {
            access.apply(sub)?;
            sub = sub.parent().unwrap_or(dir);
        }
        let tmp = parent.join(format!(".coffer-{}", crate::local::ids::random_hex(6)));
        let mut guard = TmpFile(Some(tmp.clone()));
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
            f.write_all(&bytes)?;
        }
        std::os::unix::fs::chown(&tmp, Some(s.uid), Some(s.gid)).with_context(|| {
            format!(
                "set owner {}:{} on {} (run the worker as root to own files as others)",
                s.uid,
                s.gid,
                path.display()
            )
        })?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(s.mode))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("rename into {}", path.display()))?;
        guard.0 = None;
    }
    Ok(written)
}

/// Who may enter a task's directory (and its subdirectories). It stays the worker's own: a
/// service's user must never own a directory the worker writes into, or it could plant a
/// symbolic link there and have the worker write through it. Mode 0711: each user reaches
/// the file that is theirs by name, nobody but the worker lists; or 0750 with the files'
/// group when they all have one and grant it read, so that group may list too.
#[derive(Debug, Clone, Copy)]
struct DirAccess {
    group: Option<u32>,
}

impl DirAccess {
    fn of(task: &AssignedTask) -> Self {
        let groups: BTreeSet<u32> = task.secrets.iter().map(|s| s.gid).collect();
        let group_reads = task.secrets.iter().all(|s| s.mode & 0o040 != 0);
        match (groups.len(), groups.iter().next()) {
            (1, Some(&gid)) if group_reads => Self { group: Some(gid) },
            _ => Self { group: None },
        }
    }

    fn apply(self, dir: &Path) -> anyhow::Result<()> {
        let mode = match self.group {
            Some(gid) => {
                std::os::unix::fs::chown(dir, None, Some(gid)).with_context(|| {
                    format!("set group {gid} on {} (run the worker as root to give files to others)", dir.display())
                })?;
                0o750
            }
            None => 0o711,
        };
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("make {} mode {mode:o}", dir.display()))
    }
}

/// Removes the files under `dir` whose path relative to `root` is not in `keep`.
fn remove_unlisted(root: &Path, dir: &Path, keep: &BTreeSet<&str>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(kind) = e.file_type() else { continue };
        if kind.is_dir() {
            remove_unlisted(root, &path, keep);
            let _ = std::fs::remove_dir(&path); // only if now empty
        } else {
            let rel = path.strip_prefix(root).ok().and_then(|r| r.to_str()).unwrap_or_default();
            if !keep.contains(rel) {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_api::worker::{AssignedSecret, RedeemedSecret};
    use std::os::unix::fs::MetadataExt;

    fn secret(id: &str, target: &str, uid: u32, gid: u32, mode: u32) -> AssignedSecret {
        AssignedSecret {
            secret_id: id.into(),
            secret_name: id.into(),
            version: 1,
            target: target.into(),
            uid,
            gid,
            mode,
        }
    }

    fn task(secrets: Vec<AssignedSecret>) -> AssignedTask {
        AssignedTask {
            task_id: "t1".into(),
            service_id: "s".into(),
            service_name: "api".into(),
            slot: 0,
            secrets,
            run: None,
        }
    }

    fn redeemed(values: &[(&str, &[u8])]) -> Redeemed {
        let b64 = base64::engine::general_purpose::STANDARD;
        Redeemed {
            task_id: "t1".into(),
            secrets: values
                .iter()
                .map(|(id, v)| RedeemedSecret { secret_id: id.to_string(), version: 1, data: b64.encode(v) })
                .collect(),
        }
    }

    /// The uid and gid this test runs as (root in CI, anyone on a laptop).
    fn me(dir: &Path) -> (u32, u32) {
        let m = std::fs::metadata(dir).expect("stat");
        (m.uid(), m.gid())
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        out.sort();
        out
    }

    #[test]
    fn files_get_their_value_owner_and_mode_and_are_replaced_atomically() {
        let root = tempfile::TempDir::new().expect("tempdir");
        let (uid, gid) = me(root.path());
        // As root, give the file to someone else, as a worker running as root does.
        let (owner, group) = if uid == 0 { (4242, 4343) } else { (uid, gid) };
        let dir = root.path().join("api.0");
        let t = task(vec![secret("s1", "db", owner, group, 0o400), secret("s2", "conf/tls.pem", owner, group, 0o440)]);
        write_task(&dir, &t, &redeemed(&[("s1", b"v1"), ("s2", b"pem")]), &BTreeSet::new()).expect("write");
        let db = std::fs::metadata(dir.join("db")).expect("db");
        assert_eq!(std::fs::read(dir.join("db")).expect("read"), b"v1");
        assert_eq!((db.uid(), db.gid(), db.mode() & 0o777), (owner, group, 0o400));
        assert_eq!(std::fs::metadata(dir.join("conf/tls.pem")).expect("pem").mode() & 0o777, 0o440);

        // A rotation replaces the file by a rename: a reader holding the old file keeps the
        // old value, a new open sees the new one, and no temporary file is left behind.
        let held = std::fs::File::open(dir.join("db")).expect("open");
        let before = std::fs::metadata(dir.join("db")).expect("stat").ino();
        write_task(&dir, &t, &redeemed(&[("s1", b"v2"), ("s2", b"pem")]), &["db".into(), "conf/tls.pem".into()].into())
            .expect("rotate");
        assert_eq!(std::fs::read(dir.join("db")).expect("read"), b"v2");
        assert_ne!(std::fs::metadata(dir.join("db")).expect("stat").ino(), before, "replaced, not rewritten");
        assert_eq!(held.metadata().expect("held").len(), 2);
        assert_eq!(files_in(&dir), vec!["conf".to_string(), "db".to_string()], "no temporary file left");
    }

    #[test]
    fn a_secrets_dir_others_could_swap_or_redirect_is_refused() {
        let root = tempfile::TempDir::new().expect("tempdir");
        let open = root.path().join("open");
        std::fs::create_dir(&open).expect("mkdir");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        assert!(check_in_memory(&open.join("secrets"), true).is_err(), "inside a world-writable, non-sticky dir");
        let real = root.path().join("real");
        std::fs::create_dir(&real).expect("mkdir");
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        assert!(check_in_memory(&link, true).is_err(), "a symbolic link");
        let fine = root.path().join("fine");
        check_in_memory(&fine, true).expect("a directory of its own");
        assert_eq!(std::fs::metadata(&fine).expect("stat").mode() & 0o7777, 0o711);
    }

    #[test]
    fn dropped_references_and_stray_files_are_removed() {
        let root = tempfile::TempDir::new().expect("tempdir");
        let (uid, gid) = me(root.path());
        let dir = root.path().join("api.0");
        let both = task(vec![secret("s1", "a", uid, gid, 0o400), secret("s2", "b", uid, gid, 0o400)]);
        write_task(&dir, &both, &redeemed(&[("s1", b"1"), ("s2", b"2")]), &BTreeSet::new()).expect("write");
        std::fs::write(dir.join(".coffer-leftover"), b"a crash's temporary file").expect("plant");
        let one = task(vec![secret("s1", "a", uid, gid, 0o400)]);
        write_task(&dir, &one, &redeemed(&[("s1", b"1")]), &["a".into(), "b".into()].into()).expect("write");
        assert_eq!(files_in(&dir), vec!["a".to_string()]);
    }

    #[test]
    fn targets_that_leave_the_task_directory_are_refused_and_nothing_is_written() {
        let root = tempfile::TempDir::new().expect("tempdir");
        let (uid, gid) = me(root.path());
        let dir = root.path().join("tasks").join("api.0");
        for target in ["../escape", "/etc/coffer-escape", "a/../../escape", "a//b", "./a", ""] {
            let t = task(vec![secret("s1", target, uid, gid, 0o400)]);
            assert!(write_task(&dir, &t, &redeemed(&[("s1", b"x")]), &BTreeSet::new()).is_err(), "{target:?}");
        }
        assert!(!root.path().join("tasks/escape").exists() && !root.path().join("escape").exists());
        assert!(!Path::new("/etc/coffer-escape").exists());
        assert!(files_in(&dir).is_empty(), "{:?}", files_in(&dir));
    }

    #[test]
    fn a_version_rotated_since_the_assignment_is_written_and_recorded_as_written() {
        let root = tempfile::TempDir::new().expect("tempdir");
        let (uid, gid) = me(root.path());
        let dir = root.path().join("api.0");
        let t = task(vec![secret("s1", "db", uid, gid, 0o400)]);
        let mut newer = redeemed(&[("s1", b"v7")]);
        newer.secrets[0].version = 7;
        let written = write_task(&dir, &t, &newer, &BTreeSet::new()).expect("write");
        assert_eq!(std::fs::read(dir.join("db")).expect("read"), b"v7");
        assert_eq!(written.secrets[0].version, 7, "the next assignment naming version 7 changes nothing");
        assert_eq!(AssignedTask { secrets: vec![], ..written.clone() }, AssignedTask { secrets: vec![], ..t });
    }

    #[test]
    fn a_value_missing_from_the_redemption_or_not_base64_writes_nothing_for_it() {
        let root = tempfile::TempDir::new().expect("tempdir");
        let (uid, gid) = me(root.path());
        let dir = root.path().join("api.0");
        let t = task(vec![secret("s1", "db", uid, gid, 0o400)]);
        assert!(write_task(&dir, &t, &redeemed(&[]), &BTreeSet::new()).is_err());
        let mut bad = redeemed(&[("s1", b"x")]);
        bad.secrets[0].data = "%%%".into();
        assert!(write_task(&dir, &t, &bad, &BTreeSet::new()).is_err());
        assert!(files_in(&dir).is_empty());
    }
}
