//! What a service runs (image, command, environment, where its secrets are mounted, what a
//! secret change does): the API's shapes to the store's records and back.

use coffer_api::rules::{self, SecretChangeAction, DEFAULT_SECRETS_MOUNT};
use coffer_api::services::{RunInfo, RunSpec, ServiceUpdate};
use coffer_raft_store::model::{OnSecretChange, RuntimeOptions, ServiceRuntime};

use crate::http::error::ApiError;
use crate::manager::Manager;
use coffer_api::error::CodedError;

fn on_change(text: &str) -> Result<OnSecretChange, ApiError> {
    Ok(match rules::parse_on_secret_change(text)? {
        SecretChangeAction::Nothing => OnSecretChange::Nothing,
        SecretChangeAction::Restart => OnSecretChange::Restart,
        SecretChangeAction::Signal(s) => OnSecretChange::Signal(s),
    })
}

fn on_change_text(c: &OnSecretChange) -> String {
    match c {
        OnSecretChange::Nothing => SecretChangeAction::Nothing,
        OnSecretChange::Restart => SecretChangeAction::Restart,
        OnSecretChange::Signal(s) => SecretChangeAction::Signal(s.clone()),
    }
    .to_string()
}

/// The records of a new service's `run`, checked; `None` when it says nothing.
pub(crate) fn from_spec(r: &RunSpec) -> Result<Option<(ServiceRuntime, RuntimeOptions)>, ApiError> {
    if r.is_empty() {
        return Ok(None);
    }
    rules::run_spec(r)?;
    if r.image.is_none() {
        return Err(ApiError::invalid("command, args, env, secrets mount and on-secret-change need an image"));
    }
    let runtime = ServiceRuntime {
        image: r.image.clone(),
        command: r.command.clone(),
        args: r.args.clone(),
        env: r.env.clone(),
        docker_spec: None,
    };
    let on_secret_change = r.on_secret_change.as_deref().map(on_change).transpose()?.unwrap_or_default();
    Ok(Some((runtime, RuntimeOptions { secrets_mount: r.secrets_mount.clone(), on_secret_change })))
}

/// Checks what `u` changes of what a service runs, before anything is read.
pub(crate) fn check_update(u: &ServiceUpdate) -> Result<(), ApiError> {
    let spec = RunSpec {
        image: u.image.clone().filter(|i| !i.is_empty()),
        command: u.command.clone().unwrap_or_default(),
        args: u.args.clone().unwrap_or_default(),
        env: u.env.clone().unwrap_or_default(),
        secrets_mount: u.secrets_mount.clone(),
        on_secret_change: u.on_secret_change.clone(),
    };
    rules::run_spec(&spec)?;
    Ok(())
}

/// Applies `u` (checked with [`check_update`]) to what a service runs.
pub(crate) fn apply_update(
    u: &ServiceUpdate,
    runtime: &mut ServiceRuntime,
    options: &mut RuntimeOptions,
) -> Result<(), ApiError> {
    if let Some(i) = &u.image {
        runtime.image = Some(i.clone()).filter(|i| !i.is_empty());
        if runtime.image.is_none() {
            // Files only from now on: nothing of what ran is kept to come back later.
            (runtime.command, runtime.args, runtime.env) = (Vec::new(), Vec::new(), Vec::new());
        }
    }
    if let Some(c) = &u.command {
        runtime.command = c.clone();
    }
    if let Some(a) = &u.args {
        runtime.args = a.clone();
    }
    if let Some(e) = &u.env {
        runtime.env = e.clone();
    }
    if let Some(m) = &u.secrets_mount {
        options.secrets_mount = Some(m.clone());
    }
    if let Some(c) = &u.on_secret_change {
        options.on_secret_change = on_change(c)?;
    }
    let runs_something = !runtime.command.is_empty() || !runtime.args.is_empty() || !runtime.env.is_empty();
    if runtime.image.is_none() && runs_something {
        return Err(ApiError::invalid("command, args and env need an image"));
    }
    Ok(())
}

/// What service `id` runs, from its two records; `None` without an image.
pub(crate) fn of_service(m: &Manager, id: &str) -> Result<Option<RunInfo>, ApiError> {
    Ok(info(m.reader.service_runtime(id)?.as_ref(), m.reader.service_options(id)?.as_ref()))
}

/// What a service runs, as shown and as assigned to workers; `None` without an image.
pub(crate) fn info(runtime: Option<&ServiceRuntime>, options: Option<&RuntimeOptions>) -> Option<RunInfo> {
    let runtime = runtime?;
    let image = runtime.image.clone()?;
    let options = options.cloned().unwrap_or_default();
    Some(RunInfo {
        image,
        command: runtime.command.clone(),
        args: runtime.args.clone(),
        env: runtime.env.clone(),
        secrets_mount: options.secrets_mount.unwrap_or_else(|| DEFAULT_SECRETS_MOUNT.to_string()),
        on_secret_change: on_change_text(&options.on_secret_change),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_spec_round_trips_through_the_records() {
        let spec = RunSpec {
            image: Some("app:1".into()),
            command: vec!["/bin/app".into()],
            args: vec!["--serve".into()],
            env: vec!["MODE=prod".into()],
            secrets_mount: Some("/etc/app".into()),
            on_secret_change: Some("signal=HUP".into()),
        };
        let (rt, opts) = from_spec(&spec).expect("valid").expect("a run");
        let shown = info(Some(&rt), Some(&opts)).expect("valid");
        assert_eq!(shown.on_secret_change, "signal=SIGHUP");
        assert_eq!(shown.secrets_mount, "/etc/app");
        assert!(from_spec(&RunSpec::default()).expect("valid").is_none());
        let bare = ServiceRuntime { image: Some("x".into()), ..Default::default() };
        assert_eq!(info(Some(&bare), None).expect("valid").secrets_mount, "/run/secrets");
        assert!(info(Some(&ServiceRuntime::default()), None).is_none(), "no image, nothing runs");
        let bad = RunSpec { on_secret_change: Some("signal=NOPE".into()), ..spec };
        assert!(from_spec(&bad).is_err());
    }
}
