//! Settings that name an environment variable (`api_key_env`,
//! `secret_env`, `base_url_env`, `redis_url_env`) must hold a variable's
//! name. A key or URL pasted there by mistake would otherwise be shown as
//! a "variable name" in `--check`'s output, the log, `/readyz` and the
//! error a client gets when a provider has no key.

use super::ConfigProblem;

/// Whether `name` is a portable environment variable name: letters, digits
/// and `_`, not starting with a digit (POSIX's rule for shell variables,
/// which is what a deployment sets them with).
fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Checks the variable name at `path`. An empty or invalid one is a
/// problem whose message never quotes it: it may be the secret itself.
/// Returns whether the name can be used.
pub fn check_env_name(path: &str, name: &str, problems: &mut Vec<ConfigProblem>) -> bool {
    if name.trim().is_empty() {
        problems.push(ConfigProblem::new(
            path,
            "is empty: name the environment variable that holds the value",
        ));
        return false;
    }
    if !is_env_name(name) {
        problems.push(ConfigProblem::new(
            path,
            format!(
                "is not an environment variable name (letters, digits and _, not starting \
                 with a digit; {} characters given, not shown, as they may be the secret \
                 itself): put the value in a variable and name the variable here",
                name.chars().count()
            ),
        ));
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variable_names_pass_and_anything_else_is_refused_without_being_quoted() {
        for good in ["MOONSHOT_API_KEY", "_k", "key2", "a"] {
            let mut problems = Vec::new();
            assert!(check_env_name("x", good, &mut problems), "{good}");
            assert!(problems.is_empty(), "{good}");
        }
        for bad in [
            "sk-live-abc123",
            "2KEY",
            "MY KEY",
            "redis://:pw@host:6379",
            "KÉY",
            "KEY=",
        ] {
            let mut problems = Vec::new();
            assert!(!check_env_name(
                "providers.p.api_key_env",
                bad,
                &mut problems
            ));
            let shown = problems[0].to_string();
            assert!(
                shown.starts_with("providers.p.api_key_env: is not an environment variable name"),
                "{shown}"
            );
            assert!(!shown.contains(bad), "{shown}");
        }
        let mut problems = Vec::new();
        assert!(!check_env_name("limits.redis_url_env", " ", &mut problems));
        assert!(problems[0].to_string().contains("is empty"));
    }
}
