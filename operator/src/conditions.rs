//! Building status conditions that keep their transition time while unchanged.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition to set; `status` is "True", "False" or "Unknown".
pub fn cond(type_: &str, status: bool, reason: &str, message: impl Into<String>) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: None,
        last_transition_time: Time(jiff::Timestamp::now()),
    }
}

pub fn unknown(type_: &str, reason: &str, message: impl Into<String>) -> Condition {
    Condition {
        status: "Unknown".into(),
        ..cond(type_, false, reason, message)
    }
}

/// Merges `new` into the previous conditions: a condition whose status did not change keeps
/// its last transition time; every condition gets `generation`.
pub fn merge(
    previous: &[Condition],
    new: Vec<Condition>,
    generation: Option<i64>,
) -> Vec<Condition> {
    new.into_iter()
        .map(|mut c| {
            if let Some(old) = previous.iter().find(|o| o.type_ == c.type_) {
                if old.status == c.status {
                    c.last_transition_time = old.last_transition_time.clone();
                }
            }
            c.observed_generation = generation;
            c
        })
        .collect()
}

pub fn is_true(conds: &[Condition], type_: &str) -> bool {
    conds.iter().any(|c| c.type_ == type_ && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_status_keeps_transition_time() {
        let mut old = cond("Available", true, "A", "m");
        old.last_transition_time = Time(jiff::Timestamp::UNIX_EPOCH);
        let merged = merge(
            &[old.clone()],
            vec![
                cond("Available", true, "B", "n"),
                cond("Degraded", false, "C", "o"),
            ],
            Some(4),
        );
        assert_eq!(merged[0].last_transition_time, old.last_transition_time);
        assert_eq!(merged[0].reason, "B");
        assert_eq!(merged[0].observed_generation, Some(4));
        assert_ne!(merged[1].last_transition_time, old.last_transition_time);
        let flipped = merge(
            &[old.clone()],
            vec![cond("Available", false, "X", "y")],
            None,
        );
        assert_ne!(flipped[0].last_transition_time, old.last_transition_time);
    }
}
