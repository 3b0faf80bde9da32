//! What a request's output must match (vLLM's `StructuredOutputsParams`): a JSON schema, any
//! JSON object, a regular expression, one of a list of strings, or a Lark grammar. Plain data;
//! compiling it against a tokenizer is the model layer's job.

use crate::sampling_params::InvalidParam;

/// Longest constraint text (schema, regex, grammar, or all choices together), in bytes.
pub const MAX_CONSTRAINT_BYTES: usize = 1 << 20;

/// Most entries of a `choice` constraint.
pub const MAX_CHOICES: usize = 4096;

/// The one constraint of a request.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Constraint {
    /// A JSON schema, as JSON text.
    Json(String),
    /// Any JSON object.
    JsonObject,
    /// A regular expression the whole output must match.
    Regex(String),
    /// The output is exactly one of these strings.
    Choice(Vec<String>),
    /// A Lark grammar (llguidance's dialect).
    Grammar(String),
}

impl Constraint {
    /// The `StructuredOutputsParams` field that holds this constraint.
    pub fn field_name(&self) -> &'static str {
        match self {
            Self::Json(_) => "json",
            Self::JsonObject => "json_object",
            Self::Regex(_) => "regex",
            Self::Choice(_) => "choice",
            Self::Grammar(_) => "grammar",
        }
    }
}

/// A validated constraint with its options.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StructuredOutputs {
    /// What the output must match.
    pub constraint: Constraint,
    /// Regex of the whitespace allowed between JSON tokens (JSON constraints only); `None`
    /// allows llguidance's default (any JSON whitespace).
    pub whitespace_pattern: Option<String>,
}

fn invalid(message: String) -> InvalidParam {
    InvalidParam {
        field: "structured_outputs",
        message,
    }
}

/// The fields of `StructuredOutputsParams` as the user gave them; exactly one constraint must
/// be set.
#[derive(Clone, Debug, Default)]
pub struct StructuredOutputsFields {
    /// A JSON schema as JSON text.
    pub json: Option<String>,
    /// A regular expression.
    pub regex: Option<String>,
    /// Allowed outputs.
    pub choice: Option<Vec<String>>,
    /// A Lark grammar.
    pub grammar: Option<String>,
    /// Any JSON object.
    pub json_object: bool,
    /// Whitespace regex between JSON tokens.
    pub whitespace_pattern: Option<String>,
}

impl StructuredOutputsFields {
    /// Checks that exactly one constraint is set and every text is within its limits.
    pub fn validate(self) -> Result<StructuredOutputs, InvalidParam> {
        let mut set = Vec::new();
        if let Some(json) = self.json {
            set.push(Constraint::Json(json));
        }
        if let Some(regex) = self.regex {
            set.push(Constraint::Regex(regex));
        }
        if let Some(choice) = self.choice {
            set.push(Constraint::Choice(choice));
        }
        if let Some(grammar) = self.grammar {
            set.push(Constraint::Grammar(grammar));
        }
        if self.json_object {
            set.push(Constraint::JsonObject);
        }
        if set.len() != 1 {
            let names: Vec<_> = set.iter().map(Constraint::field_name).collect();
            return Err(invalid(format!(
                "must set exactly one of json, regex, choice, grammar, json_object; got {}",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            )));
        }
        let constraint = set.remove(0);
        let num_bytes = match &constraint {
            Constraint::Json(text) | Constraint::Regex(text) | Constraint::Grammar(text) => text.len(),
            Constraint::JsonObject => 0,
            Constraint::Choice(choices) => {
                if choices.is_empty() || choices.len() > MAX_CHOICES {
                    return Err(invalid(format!(
                        "choice must have 1 to {MAX_CHOICES} entries, got {}",
                        choices.len()
                    )));
                }
                choices.iter().map(String::len).sum()
            }
        };
        if num_bytes > MAX_CONSTRAINT_BYTES {
            return Err(invalid(format!(
                "{} may be at most {MAX_CONSTRAINT_BYTES} bytes, got {num_bytes}",
                constraint.field_name()
            )));
        }
        let is_json = matches!(constraint, Constraint::Json(_) | Constraint::JsonObject);
        if self.whitespace_pattern.is_some() && !is_json {
            return Err(invalid(format!(
                "whitespace_pattern applies to json and json_object only, not {}",
                constraint.field_name()
            )));
        }
        Ok(StructuredOutputs {
            constraint,
            whitespace_pattern: self.whitespace_pattern,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_constraint() {
        let none = StructuredOutputsFields::default().validate().unwrap_err();
        assert!(none.message.contains("got none"), "{none}");
        let two = StructuredOutputsFields {
            regex: Some("a".into()),
            json_object: true,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(two.message.contains("regex, json_object"), "{two}");
        let one = StructuredOutputsFields {
            choice: Some(vec!["x".into()]),
            ..Default::default()
        }
        .validate()
        .unwrap();
        assert_eq!(one.constraint, Constraint::Choice(vec!["x".into()]));
    }

    #[test]
    fn limits_name_the_field() {
        let empty = StructuredOutputsFields {
            choice: Some(Vec::new()),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(empty.field, "structured_outputs");
        assert!(empty.message.contains("choice must have 1 to"), "{empty}");
        let ws = StructuredOutputsFields {
            regex: Some("a".into()),
            whitespace_pattern: Some(" ".into()),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(ws.message.contains("not regex"), "{ws}");
    }
}
