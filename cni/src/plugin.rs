//! One plugin invocation as a container runtime makes it: the `CNI_*`
//! environment and the configuration on stdin in, a result or an error
//! document and an exit code out. VERSION is answered here; every other verb
//! is forwarded to the node daemon.
//!
//! This module owns validation and the mapping of failures to spec codes; it
//! never touches a network namespace or a port itself (the daemon does), and
//! it does not write to the process's stdout or exit (the binary does).

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use crate::args::CniArgs;
use crate::config::{is_valid_name, peek_version, PluginConfig};
use crate::protocol::{call, Attachment, CallError, Command, DaemonReply, DaemonRequest};
use crate::spec::{CniError, ErrorCode, SpecVersion, VersionResult, CURRENT_VERSION};

/// What the binary prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The document for stdout, if any.
    pub stdout: Option<String>,
    /// Lines for stderr (unstructured log).
    pub stderr: Vec<String>,
    /// 0 on success, 1 on error.
    pub exit_code: i32,
}

impl Outcome {
    fn success(stdout: Option<String>) -> Outcome {
        Outcome {
            stdout,
            stderr: Vec::new(),
            exit_code: 0,
        }
    }

    fn error(error: CniError) -> Outcome {
        Outcome {
            stdout: Some(to_json(&error)),
            stderr: vec![error.to_string()],
            exit_code: 1,
        }
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    // Serialising these plain structs cannot fail; an empty object would be
    // the answer if it ever did.
    serde_json::to_string(value).unwrap_or_else(|_| "{}".to_owned())
}

/// The verbs a runtime may put in `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Version,
    Daemon(Command),
}

fn parse_verb(text: &str) -> Option<Verb> {
    Some(match text {
        "VERSION" => Verb::Version,
        "ADD" => Verb::Daemon(Command::Add),
        "DEL" => Verb::Daemon(Command::Del),
        "CHECK" => Verb::Daemon(Command::Check),
        "STATUS" => Verb::Daemon(Command::Status),
        "GC" => Verb::Daemon(Command::Gc),
        _ => return None,
    })
}

/// Environment variables each verb needs. `CNI_PATH` is left out: this
/// plugin delegates to no other plugin, so it never reads it.
fn required_env(command: Command) -> &'static [&'static str] {
    match command {
        Command::Add | Command::Check => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
        Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME"],
        Command::Status | Command::Gc => &[],
    }
}

/// Whether `name` is a Linux interface name: 1..=15 bytes, not `.`/`..`,
/// no `/`, `:` or whitespace.
pub fn is_valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
}

fn env_error(msg: String) -> CniError {
    CniError::new(ErrorCode::InvalidEnvironmentVariables, msg)
}

/// Runs one invocation. `env` looks up environment variables; `stdin` is
/// read to the end unless the verb is VERSION and `stdin_is_terminal`.
pub fn run(
    env: &dyn Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
    stdin_is_terminal: bool,
) -> Outcome {
    let get = |name: &str| env(name).filter(|v| !v.is_empty());

    let verb = match get("CNI_COMMAND") {
        None => {
            return Outcome::error(env_error(
                "required environment variable CNI_COMMAND is missing".into(),
            ))
        }
        Some(text) => match parse_verb(&text) {
            Some(v) => v,
            None => {
                return Outcome::error(env_error(format!(
                    "CNI_COMMAND {text:?} is not one of ADD, DEL, CHECK, STATUS, GC, VERSION"
                )))
            }
        },
    };

    let mut input = Vec::new();
    if verb == Verb::Version {
        if !stdin_is_terminal {
            // VERSION needs no input; an unreadable stdin only loses the echo.
            let _ = stdin.read_to_end(&mut input);
        }
        let version = peek_version(&input).unwrap_or_else(|| CURRENT_VERSION.to_owned());
        return Outcome::success(Some(to_json(&VersionResult::new(version))));
    }
    let Verb::Daemon(command) = verb else {
        return Outcome::error(CniError::new(ErrorCode::Internal, "unreachable verb"));
    };
    if let Err(e) = stdin.read_to_end(&mut input) {
        return Outcome::error(CniError::new(
            ErrorCode::IoFailure,
            format!("reading the network configuration from stdin failed: {e}"),
        ));
    }
    let label = peek_version(&input)
        .filter(|v| SpecVersion::is_supported(v))
        .unwrap_or_else(|| CURRENT_VERSION.to_owned());
    match forward(command, &get, &input) {
        Ok(outcome) => outcome,
        Err(error) => Outcome::error(error.for_version(&label)),
    }
}

/// Everything after the verb is known: validate, build the request, call the daemon.
fn forward(
    command: Command,
    get: &dyn Fn(&str) -> Option<String>,
    input: &[u8],
) -> Result<Outcome, CniError> {
    let missing: Vec<&str> = required_env(command)
        .iter()
        .copied()
        .filter(|name| get(name).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(env_error(format!(
            "required environment variables missing for {}: {}",
            command.as_str(),
            missing.join(", ")
        )));
    }

    let config = PluginConfig::parse(input).map_err(|e| e.to_cni_error())?;
    let version = SpecVersion::parse(&config.cni_version)
        .ok_or_else(|| CniError::new(ErrorCode::DecodingFailure, "unparsable cniVersion"))?;
    let minimum = match command {
        Command::Check => Some(SpecVersion::CHECK),
        Command::Status | Command::Gc => Some(SpecVersion::STATUS_AND_GC),
        Command::Add | Command::Del => None,
    };
    if let Some(min) = minimum.filter(|m| version < *m) {
        return Err(CniError::new(
            ErrorCode::IncompatibleVersion,
            format!(
                "{} needs cniVersion {min} or later; the configuration says {}",
                command.as_str(),
                config.cni_version
            ),
        ));
    }

    if command == Command::Check && config.prev_result.is_none() {
        return Err(CniError::new(
            ErrorCode::InvalidNetworkConfig,
            "CHECK needs prevResult, the result of the attachment's ADD",
        ));
    }

    let attachment = match command {
        Command::Add | Command::Del | Command::Check => Some(attachment(get, &config)?),
        Command::Status | Command::Gc => None,
    };
    let socket = config.socket_path.clone();
    let timeout = Duration::from_secs(config.daemon_timeout_secs);
    let prev_result = config.prev_result.clone();
    let cni_version = config.cni_version.clone();
    let request = DaemonRequest {
        command,
        attachment,
        config,
    };

    match call(&socket, &request, timeout) {
        Ok(DaemonReply::Result(result)) if command == Command::Add => {
            let result = match prev_result {
                Some(prev) => result.chain_after(prev),
                None => result,
            };
            Ok(Outcome::success(Some(to_json(
                &result.for_version(&cni_version),
            ))))
        }
        Ok(DaemonReply::Result(_)) | Ok(DaemonReply::Done) if command != Command::Add => {
            Ok(Outcome::success(None))
        }
        Ok(DaemonReply::Result(_)) | Ok(DaemonReply::Done) => Err(CniError::new(
            ErrorCode::Internal,
            "node daemon answered ADD without a result",
        )),
        Ok(DaemonReply::Error(e)) => Err(e),
        Err(e) => no_answer(command, e),
    }
}

/// The answer when the daemon gave none.
///
/// DEL succeeds when nothing listens on the socket: the pod's kernel
/// interface goes with its netns and the vhost-user socket with the pod's
/// volume, and the daemon reconciles its ports against its own records when
/// it starts (and on GC), so failing would only keep the pod from being
/// removed. A daemon that accepts the connection but does not answer is
/// still there and holds the state, so that DEL gets code 11 and is retried.
fn no_answer(command: Command, error: CallError) -> Result<Outcome, CniError> {
    match (command, &error) {
        (_, CallError::BadReply { .. }) => {
            Err(CniError::new(ErrorCode::Internal, error.to_string()))
        }
        (Command::Del, CallError::Unreachable { .. }) => Ok(Outcome {
            stdout: None,
            stderr: vec![format!(
                "{error}; DEL succeeds, the daemon releases what is left when it starts"
            )],
            exit_code: 0,
        }),
        (Command::Status, _) => Err(CniError::new(
            ErrorCode::PluginNotAvailable,
            error.to_string(),
        )),
        _ => Err(CniError::new(ErrorCode::TryAgainLater, error.to_string())
            .with_details("the ovn-bridge node daemon serves this plugin; retry once it is up")),
    }
}

fn attachment(
    get: &dyn Fn(&str) -> Option<String>,
    config: &PluginConfig,
) -> Result<Attachment, CniError> {
    // Presence was checked by the caller; an absent value here is the empty string.
    let container_id = get("CNI_CONTAINERID").unwrap_or_default();
    if !is_valid_name(&container_id) {
        return Err(env_error(format!(
            "CNI_CONTAINERID {container_id:?} must start with an alphanumeric character and hold only alphanumerics, '_', '.' or '-'"
        )));
    }
    let ifname = get("CNI_IFNAME").unwrap_or_default();
    if !is_valid_ifname(&ifname) {
        return Err(env_error(format!(
            "CNI_IFNAME {ifname:?} is not an interface name (1 to 15 characters, no '/', ':' or whitespace, not '.' or '..')"
        )));
    }
    let args = match get("CNI_ARGS") {
        None => CniArgs::default(),
        Some(text) => CniArgs::parse(&text).map_err(|e| env_error(e.to_string()))?,
    };
    let vhost_socket_dir: Option<PathBuf> = match (&config.vhost_user, &args.pod_uid) {
        (Some(vhost), Some(uid)) => {
            if uid.is_empty() || uid == "." || uid == ".." || uid.contains('/') {
                return Err(env_error(format!(
                    "K8S_POD_UID {uid:?} in CNI_ARGS is not a pod uid"
                )));
            }
            Some(vhost.host_dir(&config.kubelet_dir, uid))
        }
        _ => None,
    };
    Ok(Attachment {
        container_id,
        ifname,
        netns: get("CNI_NETNS"),
        args,
        vhost_socket_dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn run_with(vars: &[(&str, &str)], stdin: &str) -> Outcome {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let env = move |name: &str| map.get(name).cloned();
        run(&env, &mut stdin.as_bytes(), false)
    }

    fn code(outcome: &Outcome) -> u64 {
        let v: serde_json::Value =
            serde_json::from_str(outcome.stdout.as_deref().unwrap()).unwrap();
        v["code"].as_u64().unwrap()
    }

    #[test]
    fn interface_names_follow_linux_rules() {
        assert!(is_valid_ifname("eth0"));
        assert!(is_valid_ifname("a23456789012345"));
        assert!(!is_valid_ifname("a234567890123456"));
        assert!(!is_valid_ifname(""));
        assert!(!is_valid_ifname(".."));
        assert!(!is_valid_ifname("et:0"));
        assert!(!is_valid_ifname("et h0"));
    }

    #[test]
    fn invalid_container_id_and_pod_uid_are_env_errors() {
        let conf = r#"{"cniVersion":"1.1.0","name":"n","type":"t","socketPath":"/nonexistent/x.sock","vhost_user_socket_volume_name":"v"}"#;
        let bad_id = run_with(
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "/etc"),
                ("CNI_NETNS", "/n"),
                ("CNI_IFNAME", "eth0"),
            ],
            conf,
        );
        assert_eq!(code(&bad_id), 4);
        assert!(bad_id.stdout.unwrap().contains("CNI_CONTAINERID"));
        let bad_uid = run_with(
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "c1"),
                ("CNI_NETNS", "/n"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", "K8S_POD_UID=../../etc"),
            ],
            conf,
        );
        assert_eq!(code(&bad_uid), 4);
        assert!(bad_uid.stdout.unwrap().contains("K8S_POD_UID"));
    }

    #[test]
    fn check_needs_spec_0_4() {
        let out = run_with(
            &[
                ("CNI_COMMAND", "CHECK"),
                ("CNI_CONTAINERID", "c1"),
                ("CNI_NETNS", "/n"),
                ("CNI_IFNAME", "eth0"),
            ],
            r#"{"cniVersion":"0.3.1","name":"n","type":"t"}"#,
        );
        assert_eq!(code(&out), 1);
        assert_eq!(out.exit_code, 1);
    }
}
