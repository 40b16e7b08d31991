//! Named failpoints, so tests can crash the process or inject errors at any step boundary.
//!
//! Configured once per process from `TENANTD_FAILPOINTS`, a `;`-separated list of
//! `name=action` where action is `exit` (the process exits at once with code
//! [`EXIT_CODE`], like a crash: no cleanup, leases left to expire), `error` (a fatal step
//! error), `retry` (a retryable step error) or `sleep(MS)`; `action*N` fires N times only.
//!
//! The engine evaluates `{kind}.before_{step}` before a step runs and `{kind}.after_{step}`
//! after its side effects but before its done mark is committed: the window a real crash
//! is most likely to hit. Workflows may evaluate their own names (e.g. a verification step),
//! and use a name as a switch with [`armed`] (action `on`) to inject a fault of their own.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use super::StepError;

pub const ENV: &str = "TENANTD_FAILPOINTS";
pub const EXIT_CODE: i32 = 86;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Exit,
    Error,
    Retry,
    Sleep(u64),
    On,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    action: Action,
    remaining: Option<u32>,
}

fn registry() -> &'static Mutex<HashMap<String, Entry>> {
    static POINTS: OnceLock<Mutex<HashMap<String, Entry>>> = OnceLock::new();
    POINTS.get_or_init(|| {
        let spec = std::env::var(ENV).unwrap_or_default();
        let points = parse(&spec).unwrap_or_else(|e| {
            tracing::error!(error = %e, "ignoring invalid {ENV}");
            HashMap::new()
        });
        Mutex::new(points)
    })
}

fn parse(spec: &str) -> Result<HashMap<String, Entry>, String> {
    let mut out = HashMap::new();
    for item in spec.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, action) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?}: expected name=action"))?;
        let (action, remaining) = match action.split_once('*') {
            Some((a, n)) => (
                a,
                Some(n.parse().map_err(|_| format!("{item:?}: bad count"))?),
            ),
            None => (action, None),
        };
        let action = match action {
            "exit" => Action::Exit,
            "error" => Action::Error,
            "retry" => Action::Retry,
            "on" => Action::On,
            s if s.starts_with("sleep(") && s.ends_with(')') => Action::Sleep(
                s[6..s.len() - 1]
                    .parse()
                    .map_err(|_| format!("{item:?}: bad sleep"))?,
            ),
            other => return Err(format!("{item:?}: unknown action {other:?}")),
        };
        out.insert(name.trim().to_owned(), Entry { action, remaining });
    }
    Ok(out)
}

fn take(name: &str) -> Option<Action> {
    let mut points = registry().lock().expect("failpoint lock");
    let entry = points.get_mut(name)?;
    let action = entry.action.clone();
    if let Some(n) = entry.remaining.as_mut() {
        if *n == 0 {
            return None;
        }
        *n -= 1;
    }
    Some(action)
}

/// Evaluates the failpoint `name`.
pub async fn hit(name: &str) -> Result<(), StepError> {
    match take(name) {
        None => Ok(()),
        Some(Action::Exit) => {
            tracing::warn!(failpoint = name, "failpoint: exiting the process");
            std::process::exit(EXIT_CODE);
        }
        Some(Action::Error) => Err(StepError::internal(format!(
            "failpoint {name} injected a failure"
        ))),
        Some(Action::Retry) => Err(StepError::Retryable(format!(
            "failpoint {name} injected a transient failure"
        ))),
        Some(Action::Sleep(ms)) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(())
        }
        Some(Action::On) => Ok(()),
    }
}

/// Whether the switch `name` is armed (any action; counts down like [`hit`]).
pub fn armed(name: &str) -> bool {
    take(name).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        let p = parse("a.b=exit; c=retry*2 ;d=sleep(50);e=on*1").unwrap();
        assert_eq!(p["e"].action, Action::On);
        assert_eq!(p["a.b"].action, Action::Exit);
        assert_eq!(p["c"].remaining, Some(2));
        assert_eq!(p["d"].action, Action::Sleep(50));
        assert!(parse("x").is_err());
        assert!(parse("x=explode").is_err());
        assert!(parse("").unwrap().is_empty());
    }
}
