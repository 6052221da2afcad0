//! Input rules that the client and the server share (DESIGN.md §7): names, labels, the
//! size of a secret value, targets and modes of secret files, replicas, the `--secret`
//! spec grammar and placement constraints. The manager checks them before anything is
//! proposed (a request that breaks one gets `invalid_argument` or `payload_too_large` and
//! changes nothing); the CLI checks them before it sends anything.

use std::collections::BTreeMap;

use crate::error::{CodedError, ErrorCode};
use crate::services::SecretRefSpec;

/// Why an input breaks a rule: a stable code and a message that says what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RuleError {
    pub code: ErrorCode,
    pub message: String,
}

impl CodedError for RuleError {
    fn with_code(code: ErrorCode, message: String) -> Self {
        Self { code, message }
    }
}

pub const MAX_SECRET_BYTES: usize = 500 * 1024;
pub const MAX_REPLICAS: u32 = 10_000;
const MAX_LABELS: usize = 64;
const MAX_LABEL_KEY: usize = 128;
const MAX_LABEL_VALUE: usize = 1024;
const MAX_TARGET: usize = 255;
/// Constraints one service may have.
pub const MAX_CONSTRAINTS: usize = 64;
const MAX_CONSTRAINT: usize = 1024;
const MAX_HOSTNAME: usize = 253;

/// Whether `c` is a control character or one that reorders text (bidi overrides and
/// isolates, marks): either can make a listing print something other than what is stored.
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{061c}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Refuses text with control or bidi characters.
fn plain_text(what: &str, text: &str) -> Result<(), RuleError> {
    match text.chars().find(|c| is_unsafe_char(*c)) {
        Some(c) => Err(RuleError::invalid(format!(
            "{what} contains the control or bidi character U+{:04X}, which is not allowed",
            u32::from(c)
        ))),
        None => Ok(()),
    }
}

/// A hostname as a node reports it: 1 to 253 of letters, digits, `-` and `.`.
pub fn hostname(h: &str) -> Result<(), RuleError> {
    let ok = !h.is_empty()
        && h.len() <= MAX_HOSTNAME
        && h.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(RuleError::invalid(format!(
            "hostname {:?} is invalid: use 1 to {MAX_HOSTNAME} letters, digits, '-' and '.'",
            h.chars().filter(|c| !is_unsafe_char(*c)).take(80).collect::<String>()
        )))
    }
}

/// A service's placement constraints: at most 64, each well-formed and plain text.
pub fn constraints(list: &[String]) -> Result<Vec<Constraint>, RuleError> {
    if list.len() > MAX_CONSTRAINTS {
        return Err(RuleError::invalid(format!("at most {MAX_CONSTRAINTS} constraints")));
    }
    list.iter()
        .map(|c| {
            if c.len() > MAX_CONSTRAINT {
                return Err(RuleError::invalid(format!("a constraint is at most {MAX_CONSTRAINT} bytes")));
            }
            plain_text("a constraint", c)?;
            Constraint::parse(c)
        })
        .collect()
}

/// `[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}`.
pub fn name(kind: &str, n: &str) -> Result<(), RuleError> {
    let ok = !n.is_empty()
        && n.len() <= 64
        && n.as_bytes()[0].is_ascii_alphanumeric()
        && n.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(RuleError::invalid(format!(
            "{kind} name {:?} is invalid: use 1 to 64 of [a-zA-Z0-9_.-], starting with a letter or digit",
            truncate(n)
        )))
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

pub fn labels(l: &BTreeMap<String, String>) -> Result<(), RuleError> {
    if l.len() > MAX_LABELS {
        return Err(RuleError::invalid(format!("at most {MAX_LABELS} labels")));
    }
    for (k, v) in l {
        let key_ok = !k.is_empty()
            && k.len() <= MAX_LABEL_KEY
            && k.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-' | b'/'));
        if !key_ok {
            return Err(RuleError::invalid(format!(
                "label key {:?} is invalid: 1 to {MAX_LABEL_KEY} of [a-zA-Z0-9_.-/]",
                truncate(k)
            )));
        }
        if v.len() > MAX_LABEL_VALUE {
            return Err(RuleError::invalid(format!("label {k:?}: value over {MAX_LABEL_VALUE} bytes")));
        }
        plain_text(&format!("label {k:?}"), v)?;
    }
    Ok(())
}

/// A secret value: 1 byte to 500 KiB.
pub fn secret_size(len: usize) -> Result<u32, RuleError> {
    if len == 0 {
        return Err(RuleError::invalid("a secret value must not be empty"));
    }
    if len > MAX_SECRET_BYTES {
        return Err(RuleError::with_code(
            ErrorCode::PayloadTooLarge,
            format!("a secret value is at most {MAX_SECRET_BYTES} bytes (500 KiB); this one is {len}"),
        ));
    }
    Ok(len as u32)
}

/// A file name under a task's secrets directory: relative, no `..`, no empty parts.
pub fn target(t: &str) -> Result<(), RuleError> {
    let bad = |why: &str| Err(RuleError::invalid(format!("secret target {:?} {why}", truncate(t))));
    if t.is_empty() {
        return bad("is empty");
    }
    if t.len() > MAX_TARGET {
        return bad("is too long");
    }
    if t.starts_with('/') {
        return bad("is absolute: give a path relative to the task's secrets directory");
    }
    if t.chars().any(is_unsafe_char) {
        return bad("contains control or bidi characters");
    }
    for part in t.split('/') {
        if part.is_empty() || part == "." {
            return bad("has an empty or '.' path component");
        }
        if part == ".." {
            return bad("escapes its directory ('..')");
        }
    }
    Ok(())
}

pub fn mode(m: u32) -> Result<(), RuleError> {
    if m > 0o777 {
        return Err(RuleError::invalid(format!("mode {m:o} is not a file permission (at most 0777)")));
    }
    Ok(())
}

pub fn replicas(r: u32) -> Result<(), RuleError> {
    if r > MAX_REPLICAS {
        return Err(RuleError::invalid(format!("at most {MAX_REPLICAS} replicas")));
    }
    Ok(())
}

/// Labels from `K=V` arguments into a map, refusing duplicates (the CLI's `--label`).
pub fn parse_labels(args: &[String]) -> Result<BTreeMap<String, String>, RuleError> {
    let mut out = BTreeMap::new();
    for a in args {
        let (k, v) = a.split_once('=').ok_or_else(|| RuleError::invalid(format!("label {a:?} is not K=V")))?;
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(RuleError::invalid(format!("label {k:?} given twice")));
        }
    }
    labels(&out)?;
    Ok(out)
}

/// Parses `source=NAME[,target=T][,uid=U][,gid=G][,mode=0440][,version=N]`, or just `NAME`
/// (Docker's `--secret` grammar, with `version` for pinning).
pub fn parse_secret_spec(text: &str) -> Result<SecretRefSpec, RuleError> {
    let bad = |why: String| RuleError::invalid(format!("secret spec {text:?}: {why}"));
    let mut spec =
        SecretRefSpec { source: String::new(), target: None, uid: None, gid: None, mode: None, version: None };
    if !text.contains('=') {
        spec.source = text.to_string();
        name("secret", &spec.source)?;
        return Ok(spec);
    }
    for part in text.split(',') {
        let (k, v) = part.split_once('=').ok_or_else(|| bad(format!("{part:?} is not key=value")))?;
        let num = |what: &str| v.parse::<u32>().map_err(|_| bad(format!("{what} {v:?} is not a number")));
        match k {
            "source" | "src" => spec.source = v.to_string(),
            "target" => spec.target = Some(v.to_string()),
            "uid" => spec.uid = Some(num("uid")?),
            "gid" => spec.gid = Some(num("gid")?),
            "mode" => {
                let m = u32::from_str_radix(v.trim_start_matches("0o"), 8)
                    .map_err(|_| bad(format!("mode {v:?} is not octal")))?;
                mode(m)?;
                spec.mode = Some(m);
            }
            "version" => spec.version = Some(num("version")?),
            other => return Err(bad(format!("unknown key {other:?}"))),
        }
    }
    if spec.source.is_empty() {
        return Err(bad("it has no source=NAME".into()));
    }
    name("secret", &spec.source)?;
    if let Some(t) = &spec.target {
        target(t)?;
    }
    Ok(spec)
}

/// What a placement constraint compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConstraintField {
    Id,
    Hostname,
    Role,
    Label(String),
}

/// A placement constraint: `node.id==X`, `node.hostname==X`, `node.role==manager|worker`,
/// `node.labels.K==V`, and the same with `!=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    pub field: ConstraintField,
    pub equal: bool,
    pub value: String,
}

impl Constraint {
    /// # Errors
    /// A message saying what is wrong and what is accepted.
    pub fn parse(text: &str) -> Result<Self, RuleError> {
        let bad = |why: &str| {
            RuleError::invalid(format!(
                "constraint {:?} {why}; use node.id, node.hostname, node.role or node.labels.KEY with == or !=",
                truncate(text)
            ))
        };
        let (lhs, rhs, equal) = if let Some((l, r)) = text.split_once("!=") {
            (l, r, false)
        } else if let Some((l, r)) = text.split_once("==") {
            (l, r, true)
        } else {
            return Err(bad("has no == or !="));
        };
        let (lhs, value) = (lhs.trim(), rhs.trim());
        if value.is_empty() || value.contains("==") || value.contains("!=") {
            return Err(bad("has no single value"));
        }
        let field = match lhs {
            "node.id" => {
                value.parse::<u64>().map_err(|_| bad("compares node.id with something that is not a node id"))?;
                ConstraintField::Id
            }
            "node.hostname" => ConstraintField::Hostname,
            "node.role" => {
                if value != "manager" && value != "worker" {
                    return Err(bad("compares node.role with something other than manager or worker"));
                }
                ConstraintField::Role
            }
            other => match other.strip_prefix("node.labels.") {
                Some(k) if !k.is_empty() => ConstraintField::Label(k.to_string()),
                _ => return Err(bad("names an unknown attribute")),
            },
        };
        Ok(Self { field, equal, value: value.to_string() })
    }
}

// -- what a service runs ----------------------------------------------------------------

/// Where a container sees its task's secrets directory unless the service says otherwise.
pub const DEFAULT_SECRETS_MOUNT: &str = "/run/secrets";
const MAX_IMAGE: usize = 255;
const MAX_RUN_WORDS: usize = 256;
const MAX_RUN_WORD: usize = 4096;

/// Signals a service may ask for on a secret change (Linux's, by name). Not the ones that
/// stop a process (STOP, TSTP, TTIN, TTOU): a rotation would freeze the service.
const SIGNALS: &[&str] = &[
    "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2", "PIPE", "ALRM", "TERM",
    "STKFLT", "CHLD", "CONT", "URG", "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
];

/// What a running container is told when one of its secrets changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretChangeAction {
    /// Nothing: the file is replaced in place, and the program reads it again itself.
    Nothing,
    /// A signal, by its full name (`SIGHUP`).
    Signal(String),
    Restart,
}

impl std::fmt::Display for SecretChangeAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Nothing => f.write_str("none"),
            Self::Restart => f.write_str("restart"),
            Self::Signal(s) => write!(f, "signal={s}"),
        }
    }
}

/// Parses `none`, `restart` or `signal=NAME` (`SIGHUP` or `HUP`).
pub fn parse_on_secret_change(text: &str) -> Result<SecretChangeAction, RuleError> {
    match text {
        "none" => return Ok(SecretChangeAction::Nothing),
        "restart" => return Ok(SecretChangeAction::Restart),
        _ => {}
    }
    let bad = || {
        RuleError::invalid(format!(
            "on-secret-change {:?} is not one of none, restart, signal=NAME (such as signal=SIGHUP)",
            truncate(text)
        ))
    };
    let name = text.strip_prefix("signal=").ok_or_else(bad)?;
    let bare = name.strip_prefix("SIG").unwrap_or(name);
    if SIGNALS.contains(&bare) {
        Ok(SecretChangeAction::Signal(format!("SIG{bare}")))
    } else {
        Err(RuleError::invalid(format!("signal {:?} is not a Linux signal name such as SIGHUP", truncate(name))))
    }
}

/// An image reference as the local engine names it: no spaces or control characters.
pub fn image(i: &str) -> Result<(), RuleError> {
    let ok = !i.is_empty()
        && i.len() <= MAX_IMAGE
        && !i.starts_with('-')
        && i.bytes().all(|c| c.is_ascii_graphic() && !matches!(c, b'"' | b'\'' | b'\\'));
    if ok {
        Ok(())
    } else {
        Err(RuleError::invalid(format!("image {:?} is not an image reference (such as busybox:1.36)", truncate(i))))
    }
}

/// A command, its arguments or an environment: at most 256 words of up to 4 KiB, no NUL.
/// An entry is quoted back only when `echo` (an environment's may hold a credential).
fn run_words(what: &str, words: &[String], echo: bool) -> Result<(), RuleError> {
    if words.len() > MAX_RUN_WORDS {
        return Err(RuleError::invalid(format!("{what}: at most {MAX_RUN_WORDS} entries")));
    }
    if let Some((i, w)) = words.iter().enumerate().find(|(_, w)| w.len() > MAX_RUN_WORD || w.contains('\0')) {
        let which = if echo { format!("{:?}", truncate(w)) } else { format!("number {}", i + 1) };
        return Err(RuleError::invalid(format!("{what}: entry {which} is longer than 4 KiB or holds a NUL byte")));
    }
    Ok(())
}

/// Environment entries: `KEY=VALUE`, with a key of letters, digits and `_` not starting
/// with a digit.
pub fn env(entries: &[String]) -> Result<(), RuleError> {
    run_words("env", entries, false)?;
    for e in entries {
        let key = e.split_once('=').map(|(k, _)| k).unwrap_or_default();
        let ok = !key.is_empty()
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_');
        if !ok {
            // The value may be a credential: name the key only.
            return Err(RuleError::invalid(format!("env entry with key {:?} is not KEY=VALUE", truncate(key))));
        }
    }
    Ok(())
}

/// Where a container sees its secrets: an absolute path, not `/`, without `..`.
pub fn secrets_mount(p: &str) -> Result<(), RuleError> {
    let ok = p.starts_with('/')
        && p.len() > 1
        && p.len() <= MAX_TARGET
        && !p.chars().any(is_unsafe_char)
        && p.split('/').skip(1).all(|part| !part.is_empty() && part != "." && part != "..");
    if ok {
        Ok(())
    } else {
        Err(RuleError::invalid(format!(
            "secrets mount {:?} is not an absolute path in the container (such as /run/secrets)",
            truncate(p)
        )))
    }
}

/// Every rule of what a service runs.
pub fn run_spec(r: &crate::services::RunSpec) -> Result<(), RuleError> {
    if let Some(i) = &r.image {
        image(i)?;
    }
    run_words("command", &r.command, true)?;
    run_words("args", &r.args, true)?;
    env(&r.env)?;
    if let Some(m) = &r.secrets_mount {
        secrets_mount(m)?;
    }
    if let Some(c) = &r.on_secret_change {
        parse_on_secret_change(c)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_documented_pattern() {
        for ok in ["a", "db_password", "A.b-c_9", &"x".repeat(64)] {
            name("secret", ok).expect(ok);
        }
        for bad in ["", "_x", ".x", "-x", "a b", "a/b", "é", &"x".repeat(65)] {
            assert!(name("secret", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn targets_stay_in_their_directory() {
        for ok in ["db", "conf/db.pem", "a.b"] {
            target(ok).expect(ok);
        }
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/.", "a\0b"] {
            assert!(target(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn sizes_and_modes() {
        assert!(secret_size(0).is_err());
        assert_eq!(secret_size(1).expect("1 byte"), 1);
        secret_size(MAX_SECRET_BYTES).expect("500 KiB");
        let e = secret_size(MAX_SECRET_BYTES + 1).expect_err("too big");
        assert_eq!(e.code, ErrorCode::PayloadTooLarge);
        mode(0o440).expect("mode");
        assert!(mode(0o1777).is_err());
    }

    #[test]
    fn secret_specs_parse_like_docker() {
        let s = parse_secret_spec("source=db_password,target=db,uid=10,gid=20,mode=0400").expect("spec");
        assert_eq!(
            (s.source.as_str(), s.target.as_deref(), s.uid, s.gid, s.mode),
            ("db_password", Some("db"), Some(10), Some(20), Some(0o400))
        );
        assert_eq!(parse_secret_spec("db_password").expect("bare name").source, "db_password");
        assert_eq!(parse_secret_spec("source=x,version=3").expect("pinned").version, Some(3));
        for bad in [
            "target=db",
            "source=x,mode=999",
            "source=x,mode=1777",
            "source=x,uid=-1",
            "source=x,colour=red",
            "source=x,oops",
            "source=x,target=../etc",
            "bad name",
        ] {
            assert!(parse_secret_spec(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn control_and_bidi_characters_are_refused_everywhere_text_is_shown() {
        for bad in ["a\u{1b}]8;;x", "\u{202e}gnp.exe", "a\u{2066}b", "tab\there", "nul\0"] {
            let one = BTreeMap::from([("k".to_string(), bad.to_string())]);
            assert!(labels(&one).is_err(), "label value {bad:?}");
            assert!(constraints(&[format!("node.labels.k=={bad}")]).is_err(), "constraint {bad:?}");
            assert!(hostname(bad).is_err(), "hostname {bad:?}");
        }
        let e = labels(&BTreeMap::from([("k".to_string(), "\u{202e}x".to_string())])).expect_err("bidi");
        assert!(e.message.contains("U+202E") && !e.message.contains('\u{202e}'), "{}", e.message);
        hostname("prod-db-01.example.com").expect("a hostname");
        assert!(hostname("").is_err() && hostname("a b").is_err() && hostname(&"a".repeat(254)).is_err());
        let many: Vec<String> = (0..=MAX_CONSTRAINTS).map(|i| format!("node.labels.k{i}==v")).collect();
        assert!(constraints(&many).is_err(), "too many constraints");
        assert_eq!(constraints(&many[..MAX_CONSTRAINTS]).expect("64 are fine").len(), MAX_CONSTRAINTS);
    }

    #[test]
    fn labels_parse_once_each() {
        let l = parse_labels(&["team=db".into(), "tier=".into()]).expect("labels");
        assert_eq!(l.get("team").map(String::as_str), Some("db"));
        assert!(parse_labels(&["a=1".into(), "a=2".into()]).is_err(), "duplicate");
        assert!(parse_labels(&["novalue".into()]).is_err());
    }

    #[test]
    fn constraints_parse_the_documented_forms_and_refuse_others() {
        let c = Constraint::parse("node.labels.zone==eu-1").expect("label");
        assert_eq!(c, Constraint { field: ConstraintField::Label("zone".into()), equal: true, value: "eu-1".into() });
        assert!(!Constraint::parse("node.role!=manager").expect("role").equal);
        Constraint::parse("node.id==42").expect("id");
        Constraint::parse("node.hostname==web-1").expect("hostname");
        for bad in [
            "node.role==boss",
            "node.id==abc",
            "node.labels.==x",
            "node.color==red",
            "zone=eu",
            "node.hostname==",
            "a==b==c",
        ] {
            assert!(Constraint::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn what_a_service_runs_is_checked() {
        assert_eq!(parse_on_secret_change("signal=HUP").expect("valid"), SecretChangeAction::Signal("SIGHUP".into()));
        assert_eq!(parse_on_secret_change("signal=SIGUSR1").expect("valid").to_string(), "signal=SIGUSR1");
        assert_eq!(parse_on_secret_change("restart").expect("valid"), SecretChangeAction::Restart);
        assert_eq!(parse_on_secret_change("none").expect("valid"), SecretChangeAction::Nothing);
        for bad in ["signal=", "signal=SIGFOO", "reload", "signal=9", "", "signal=SIGSTOP"] {
            assert!(parse_on_secret_change(bad).is_err(), "{bad}");
        }
        assert!(image("busybox:1.36").is_ok() && image("localhost/a/b@sha256:00").is_ok());
        for bad in ["", "a b", "-rm", "x\ny", "a\"b"] {
            assert!(image(bad).is_err(), "{bad}");
        }
        assert!(env(&["A=1".into(), "_B_2=".into()]).is_ok());
        for bad in ["=1", "1A=x", "A-B=1", "NOEQUALS"] {
            assert!(env(&[bad.into()]).is_err(), "{bad}");
        }
        let e = env(&["BAD KEY=hunter2".into()]).expect_err("invalid");
        assert!(!e.message.contains("hunter2"), "{e}");
        let e = env(&["KEY=hunter2\0".into()]).expect_err("invalid");
        assert!(!e.message.contains("hunter2"), "{e}");
        assert!(secrets_mount("/run/secrets").is_ok() && secrets_mount("/etc/app/keys").is_ok());
        for bad in ["/", "run/secrets", "/run/../etc", "/run//x", "/run/"] {
            assert!(secrets_mount(bad).is_err(), "{bad}");
        }
    }
}
