//! `--feature-gates` (etcd 3.6/3.7): named switches for etcd's experimental features, and the
//! `--experimental-*` boolean flags that 3.6 still accepts for the same switches.
//!
//! Invariant: every gate etcd 3.6 and 3.7 define is known here with etcd's default, and each one
//! either drives an etcd-rs setting, is a no-op by design in etcd-rs (the table says why), or is
//! refused when turned away from what etcd-rs does — never silently ignored. Error texts are
//! etcd's (pkg/featuregate and embed's SetFeatureGatesFromExperimentalFlags).

use std::collections::BTreeMap;

/// What a gate does in etcd-rs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Sets an etcd-rs setting (see [`FeatureGates`]'s accessors).
    Drives,
    /// Nothing to do in etcd-rs, by design; the text says why.
    NoOp(&'static str),
    /// Not built: only the value etcd-rs behaves as is accepted.
    Unbuilt { etcd_rs_behaves_as: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Maturity {
    Alpha,
    Beta,
}

/// One of etcd's server feature gates.
#[derive(Debug)]
pub struct Gate {
    pub name: &'static str,
    /// etcd's default.
    pub default: bool,
    pub maturity: Maturity,
    /// The 3.5-style flag 3.6 maps onto this gate (ExperimentalFlagToFeatureMap).
    pub experimental_flag: Option<&'static str>,
    pub effect: Effect,
}

/// etcd 3.6's DefaultEtcdServerFeatureGates plus 3.7's two new gates.
pub const GATES: &[Gate] = &[
    Gate {
        name: "StopGRPCServiceOnDefrag",
        default: false,
        maturity: Maturity::Alpha,
        experimental_flag: Some("experimental-stop-grpc-service-on-defrag"),
        effect: Effect::Unbuilt { etcd_rs_behaves_as: false },
    },
    Gate {
        name: "InitialCorruptCheck",
        default: false,
        maturity: Maturity::Alpha,
        experimental_flag: Some("experimental-initial-corrupt-check"),
        effect: Effect::Drives,
    },
    Gate {
        name: "CompactHashCheck",
        default: false,
        maturity: Maturity::Alpha,
        experimental_flag: Some("experimental-compact-hash-check-enabled"),
        effect: Effect::Drives,
    },
    Gate {
        name: "TxnModeWriteWithSharedBuffer",
        default: true,
        maturity: Maturity::Beta,
        experimental_flag: Some("experimental-txn-mode-write-with-shared-buffer"),
        effect: Effect::NoOp(
            "a bbolt read-buffer detail of etcd's write transactions; redb transactions have no shared buffer, \
             and a txn's reads see its own writes either way",
        ),
    },
    Gate {
        name: "LeaseCheckpoint",
        default: false,
        maturity: Maturity::Alpha,
        experimental_flag: Some("experimental-enable-lease-checkpoint"),
        effect: Effect::Drives,
    },
    Gate {
        name: "LeaseCheckpointPersist",
        default: false,
        maturity: Maturity::Alpha,
        experimental_flag: Some("experimental-enable-lease-checkpoint-persist"),
        effect: Effect::NoOp(
            "etcd-rs always stores a checkpointed remaining TTL in the lease table, as etcd 3.6 always does",
        ),
    },
    Gate {
        name: "SetMemberLocalAddr",
        default: false,
        maturity: Maturity::Alpha,
        experimental_flag: None,
        effect: Effect::Unbuilt { etcd_rs_behaves_as: false },
    },
    // 3.7: keep-alives answered without waiting for the applied index; etcd-rs waits
    Gate {
        name: "FastLeaseKeepAlive",
        default: true,
        maturity: Maturity::Beta,
        experimental_flag: None,
        effect: Effect::Unbuilt { etcd_rs_behaves_as: false },
    },
    Gate {
        name: "PriorityRequest",
        default: false,
        maturity: Maturity::Alpha,
        experimental_flag: None,
        effect: Effect::Unbuilt { etcd_rs_behaves_as: false },
    },
];

/// featuregate's toggles for every alpha / beta gate at once.
const ALL_ALPHA: &str = "AllAlpha";
const ALL_BETA: &str = "AllBeta";

/// A feature-gate error and the exit code etcd ends with for it (2: the flag's value, refused
/// by Go's flag package; 1: a check after parsing, "failed to verify flags").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct GateError {
    pub message: String,
    pub exit_code: i32,
}

fn verify_err<T>(message: String) -> Result<T, GateError> {
    Err(GateError { message, exit_code: 1 })
}

/// Go's strconv.ParseBool.
fn parse_go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// One `--feature-gates` value (`Name=bool,...`) as featuregate's Set reads it: pairs in order,
/// names checked against the known gates. Errors are featuregate's words.
pub fn parse_list(value: &str) -> Result<Vec<(String, bool)>, String> {
    let mut out = Vec::new();
    for s in value.split(',').filter(|s| !s.is_empty()) {
        let (k, v) = match s.split_once('=') {
            Some((k, v)) => (k.trim(), v.trim()),
            None => return Err(format!("missing bool value for {}", s.trim())),
        };
        let Some(b) = parse_go_bool(v) else {
            return Err(format!("invalid value of {k}={v}, err: strconv.ParseBool: parsing {v:?}: invalid syntax"));
        };
        if k != ALL_ALPHA && k != ALL_BETA && !GATES.iter().any(|g| g.name == k) {
            return Err(format!("unrecognized feature gate: {k}"));
        }
        out.push((k.to_string(), b));
    }
    Ok(out)
}

/// The gates as set: etcd's default where nothing set them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureGates {
    explicit: BTreeMap<&'static str, bool>,
}

impl FeatureGates {
    /// The gate's value (etcd's default when not set). Unknown names are a programming error
    /// and read as false.
    pub fn enabled(&self, name: &str) -> bool {
        match GATES.iter().find(|g| g.name == name) {
            Some(g) => self.explicit.get(g.name).copied().unwrap_or(g.default),
            None => false,
        }
    }

    /// The value set by `--feature-gates` or the gate's experimental flag, if any.
    pub fn explicitly(&self, name: &str) -> Option<bool> {
        self.explicit.get(name).copied()
    }

    /// Resolves `--feature-gates` occurrences (each as given; Go's flag package applies them in
    /// order) and the experimental flags that were set (`experimental(flag)`: Some when given).
    /// `from_file`: the values came from `--config-file` (etcd ends with 1 for any of its errors).
    pub fn resolve(
        gate_values: &[String],
        experimental: impl Fn(&str) -> Option<bool>,
        from_file: bool,
    ) -> Result<FeatureGates, GateError> {
        let mut explicit: BTreeMap<&'static str, bool> = BTreeMap::new();
        for value in gate_values {
            let pairs = parse_list(value).map_err(|e| GateError {
                message: if from_file { e } else { format!("invalid value {value:?} for flag -feature-gates: {e}") },
                exit_code: if from_file { 1 } else { 2 },
            })?;
            for (k, v) in pairs {
                let maturity = match k.as_str() {
                    ALL_ALPHA => Some(Maturity::Alpha),
                    ALL_BETA => Some(Maturity::Beta),
                    _ => None,
                };
                match maturity {
                    // featuregate: the toggle sets only the gates not set before it
                    Some(m) => {
                        for g in GATES.iter().filter(|g| g.maturity == m) {
                            explicit.entry(g.name).or_insert(v);
                        }
                    }
                    None => {
                        if let Some(g) = GATES.iter().find(|g| g.name == k) {
                            explicit.insert(g.name, v);
                        }
                    }
                }
            }
        }
        let joined = gate_values.join(",");
        let gates_only = FeatureGates { explicit: explicit.clone() };
        for g in GATES {
            let (Some(flag), Some(v)) = (g.experimental_flag, g.experimental_flag.and_then(&experimental)) else {
                continue;
            };
            // etcd looks for the gate's name anywhere in the --feature-gates text
            if joined.contains(g.name) {
                let fg = gates_only.enabled(g.name);
                return verify_err(format!(
                    "cannot specify both flags: --{flag}={v} and --feature-gates={name}={fg} at the same time, please just use --feature-gates={name}={fg}",
                    name = g.name
                ));
            }
            explicit.insert(g.name, v);
        }
        let gates = FeatureGates { explicit };
        gates.refuse_unbuilt()?;
        Ok(gates)
    }

    /// A gate etcd-rs has no behaviour for, set to what etcd-rs does not do, stops the start.
    fn refuse_unbuilt(&self) -> Result<(), GateError> {
        for g in GATES {
            if let (Effect::Unbuilt { etcd_rs_behaves_as }, Some(v)) = (g.effect, self.explicitly(g.name)) {
                if v != etcd_rs_behaves_as {
                    return verify_err(format!("feature gate {}={v} is not supported by etcd-rs yet", g.name));
                }
            }
        }
        Ok(())
    }

    /// etcd's LeaseCheckpointPersist check, against etcd-rs's effective checkpoint setting.
    pub fn check_lease_checkpoint(&self, lease_checkpoint: bool) -> Result<(), GateError> {
        if self.explicitly("LeaseCheckpointPersist") == Some(true) && !lease_checkpoint {
            return verify_err("enabling feature gate LeaseCheckpointPersist requires enabling feature gate LeaseCheckpoint".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(gates: &[&str], exp: &[(&str, bool)]) -> Result<FeatureGates, GateError> {
        let gates: Vec<String> = gates.iter().map(|s| s.to_string()).collect();
        FeatureGates::resolve(&gates, |f| exp.iter().find(|(n, _)| *n == f).map(|(_, v)| *v), false)
    }

    #[test]
    fn gates_default_to_etcds_and_take_their_values_in_order() {
        let g = resolve(&[], &[]).unwrap();
        assert!(!g.enabled("InitialCorruptCheck") && g.enabled("TxnModeWriteWithSharedBuffer"));
        let g = resolve(&["InitialCorruptCheck=true,TxnModeWriteWithSharedBuffer=false"], &[]).unwrap();
        assert!(g.enabled("InitialCorruptCheck") && !g.enabled("TxnModeWriteWithSharedBuffer"));
        // given twice (Talos does), both apply; a later value wins
        let g = resolve(&["InitialCorruptCheck=true", "LeaseCheckpoint=1", "InitialCorruptCheck=F"], &[]).unwrap();
        assert_eq!((g.explicitly("InitialCorruptCheck"), g.explicitly("LeaseCheckpoint")), (Some(false), Some(true)));
        // spaces around names and values are trimmed, empty items skipped, as featuregate's Set
        let g = resolve(&[" InitialCorruptCheck = true ,,"], &[]).unwrap();
        assert!(g.enabled("InitialCorruptCheck"));
    }

    #[test]
    fn bad_values_fail_with_go_flags_words_and_exit_code_2() {
        for (value, want) in [
            ("Bogus=true", "unrecognized feature gate: Bogus"),
            ("InitialCorruptCheck", "missing bool value for InitialCorruptCheck"),
            ("InitialCorruptCheck=yes", "invalid value of InitialCorruptCheck=yes, err: strconv.ParseBool: parsing \"yes\": invalid syntax"),
        ] {
            let e = resolve(&[value], &[]).unwrap_err();
            assert_eq!(e.message, format!("invalid value {value:?} for flag -feature-gates: {want}"));
            assert_eq!(e.exit_code, 2);
            let from_file = FeatureGates::resolve(&[value.to_string()], |_| None, true).unwrap_err();
            assert_eq!((from_file.message.as_str(), from_file.exit_code), (want, 1));
        }
    }

    #[test]
    fn a_gate_and_its_experimental_flag_together_are_refused_with_etcds_message() {
        let e = resolve(&["InitialCorruptCheck=false"], &[("experimental-initial-corrupt-check", true)]).unwrap_err();
        assert_eq!(
            e.message,
            "cannot specify both flags: --experimental-initial-corrupt-check=true and --feature-gates=InitialCorruptCheck=false \
             at the same time, please just use --feature-gates=InitialCorruptCheck=false"
        );
        assert_eq!(e.exit_code, 1);
        // etcd matches the gate name as a substring: LeaseCheckpointPersist names LeaseCheckpoint too
        let e = resolve(&["LeaseCheckpointPersist=true"], &[("experimental-enable-lease-checkpoint", true)]).unwrap_err();
        assert!(e.message.starts_with("cannot specify both flags: --experimental-enable-lease-checkpoint=true"), "{}", e.message);
        // the experimental flag alone sets the gate
        let g = resolve(&[], &[("experimental-initial-corrupt-check", true)]).unwrap();
        assert!(g.enabled("InitialCorruptCheck"));
    }

    #[test]
    fn unbuilt_gates_are_refused_only_away_from_what_etcd_rs_does() {
        for gate in ["StopGRPCServiceOnDefrag", "SetMemberLocalAddr", "PriorityRequest"] {
            assert!(resolve(&[&format!("{gate}=false")], &[]).is_ok(), "{gate}");
            let e = resolve(&[&format!("{gate}=true")], &[]).unwrap_err();
            assert_eq!(e.message, format!("feature gate {gate}=true is not supported by etcd-rs yet"));
        }
        let e = resolve(&[], &[("experimental-stop-grpc-service-on-defrag", true)]).unwrap_err();
        assert!(e.message.contains("StopGRPCServiceOnDefrag=true"), "{}", e.message);
        // AllAlpha=true turns on unbuilt alpha gates; a gate set before it keeps its value
        assert!(resolve(&["AllAlpha=true"], &[]).is_err());
        assert!(resolve(&["AllAlpha=false"], &[]).is_ok());
        let e = resolve(&["AllBeta=true"], &[]).unwrap_err();
        assert!(e.message.contains("FastLeaseKeepAlive=true"), "{}", e.message);
        assert!(resolve(&["FastLeaseKeepAlive=false,AllBeta=true"], &[]).unwrap().enabled("TxnModeWriteWithSharedBuffer"));
    }

    #[test]
    fn no_op_gates_are_accepted_either_way() {
        for v in ["true", "false"] {
            resolve(&[&format!("TxnModeWriteWithSharedBuffer={v},LeaseCheckpointPersist={v}")], &[]).unwrap();
        }
    }

    #[test]
    fn lease_checkpoint_persist_needs_lease_checkpoint() {
        let g = resolve(&["LeaseCheckpointPersist=true"], &[]).unwrap();
        assert_eq!(
            g.check_lease_checkpoint(false).unwrap_err().message,
            "enabling feature gate LeaseCheckpointPersist requires enabling feature gate LeaseCheckpoint"
        );
        g.check_lease_checkpoint(true).unwrap();
    }
}
