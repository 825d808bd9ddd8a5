//! `${VAR}` interpolation in string values, for secrets and per-machine settings.
//!
//! After the YAML is parsed, every string value (not keys, not numbers) is scanned:
//! - `${NAME}` is replaced by the environment variable `NAME` (`[A-Za-z_][A-Za-z0-9_]*`); when it
//!   is unset, that is an error naming the variable and the YAML path;
//! - `${NAME:-default}` uses `default` (taken literally) when `NAME` is unset or empty;
//! - `$${` is a literal `${` (so `$${HOME}` stays `${HOME}`);
//! - any other `$` is literal.
//!
//! Interpolating after parsing keeps each value's YAML path for errors, and a value containing
//! YAML syntax cannot change the structure of the file. A value that came from a variable is
//! never echoed in error messages (it may be a secret), and where a number or boolean is expected
//! its text is parsed (`port: ${PORT}`). The environment is an [`Env`]: the process's, or a map
//! given by tests.

use super::node::{Kind, Node};
use super::{Diagnostic, Env};

/// A problem in one string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InterpolationError {
    /// `${NAME}` with `NAME` not set.
    Unset(String),
    /// `${` with no closing `}`.
    Unterminated,
    /// `${...}` whose content is not a variable name.
    BadName(String),
}

impl std::fmt::Display for InterpolationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unset(name) => write!(f, "environment variable {name} is not set"),
            Self::Unterminated => f.write_str("`${` has no closing `}`"),
            Self::BadName(name) => write!(
                f,
                "`${{{name}}}` is not a variable reference (names are letters, digits and _, not starting with a digit)"
            ),
        }
    }
}

/// A string after interpolation, with the variables it used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interpolated {
    /// The resulting text.
    pub text: String,
    /// The variables substituted (set or defaulted), in order of appearance.
    pub vars: Vec<String>,
}

fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Interpolates one string, reporting every problem in it.
pub fn interpolate(text: &str, env: &Env) -> Result<Interpolated, Vec<InterpolationError>> {
    let mut out = String::with_capacity(text.len());
    let mut vars = Vec::new();
    let mut errors = Vec::new();
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let Some(close) = tail.find('}') else {
                errors.push(InterpolationError::Unterminated);
                rest = "";
                break;
            };
            let inner = &tail[..close];
            let (name, default) = match inner.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (inner, None),
            };
            if !is_name(name) {
                errors.push(InterpolationError::BadName(inner.to_string()));
            } else {
                match (
                    env.get(name).filter(|v| !v.is_empty() || default.is_none()),
                    default,
                ) {
                    (Some(value), _) => out.push_str(value),
                    (None, Some(default)) => out.push_str(default),
                    (None, None) => errors.push(InterpolationError::Unset(name.to_string())),
                }
                vars.push(name.to_string());
            }
            rest = &tail[close + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    if errors.is_empty() {
        Ok(Interpolated { text: out, vars })
    } else {
        Err(errors)
    }
}

/// Interpolates every string value in the tree in place, returning the problems with their paths.
pub(crate) fn interpolate_tree(root: &mut Node, env: &Env) -> Vec<Diagnostic> {
    let mut problems = Vec::new();
    root.walk_mut(&mut |node| {
        let Kind::Str(text) = &node.kind else { return };
        if !text.contains('$') {
            return;
        }
        match interpolate(text, env) {
            Ok(done) => {
                node.kind = Kind::Str(done.text);
                node.interpolated = done.vars;
            }
            Err(errors) => {
                for error in errors {
                    let mut d = Diagnostic::error(node.path.clone(), error.to_string());
                    d.location = Some(node.location);
                    if let InterpolationError::Unset(name) = &error {
                        d.hint = Some(format!("set {name}, or give a default: ${{{name}:-value}}"));
                    }
                    problems.push(d);
                }
            }
        }
    });
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Env {
        Env::from_vars([("HOME", "/home/ada"), ("EMPTY", ""), ("A_1", "x")])
    }

    fn ok(text: &str) -> String {
        interpolate(text, &env()).unwrap().text
    }

    #[test]
    fn substitutes_variables() {
        assert_eq!(ok("plain"), "plain");
        assert_eq!(ok("${HOME}/data"), "/home/ada/data");
        assert_eq!(ok("a${A_1}b${A_1}"), "axbx");
        assert_eq!(ok("${EMPTY}"), "");
        assert_eq!(
            interpolate("${HOME}${A_1}", &env()).unwrap().vars,
            ["HOME", "A_1"]
        );
    }

    #[test]
    fn defaults_and_escapes() {
        assert_eq!(ok("${MISSING:-fallback}"), "fallback");
        assert_eq!(ok("${EMPTY:-fallback}"), "fallback");
        assert_eq!(ok("${HOME:-fallback}"), "/home/ada");
        assert_eq!(ok("${MISSING:-}"), "");
        assert_eq!(ok("$${HOME}"), "${HOME}");
        // Left to right: a literal `$`, then an escaped `${`.
        assert_eq!(ok("$$${HOME}"), "$${HOME}");
        assert_eq!(ok("cost: $5, $HOME, $"), "cost: $5, $HOME, $");
        assert!(interpolate("$${HOME}", &env()).unwrap().vars.is_empty());
    }

    #[test]
    fn reports_every_problem() {
        assert_eq!(
            interpolate("${NOPE} and ${ALSO_NOPE}", &env()).unwrap_err(),
            [
                InterpolationError::Unset("NOPE".into()),
                InterpolationError::Unset("ALSO_NOPE".into())
            ]
        );
        assert_eq!(
            interpolate("${1X} ${}", &env()).unwrap_err(),
            [
                InterpolationError::BadName("1X".into()),
                InterpolationError::BadName(String::new())
            ]
        );
        assert_eq!(
            interpolate("${HOME", &env()).unwrap_err(),
            [InterpolationError::Unterminated]
        );
        assert_eq!(
            InterpolationError::Unset("S3_SECRET".into()).to_string(),
            "environment variable S3_SECRET is not set"
        );
    }
}
