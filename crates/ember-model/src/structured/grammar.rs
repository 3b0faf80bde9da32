//! A request's constraint as an llguidance grammar. JSON is compact by default (`", "` between
//! items, `": "` after keys, no other whitespace), so a model cannot pad its output with
//! endless whitespace; `whitespace_pattern` replaces that with a regex of allowed whitespace.

use ember_core::{Constraint, StructuredOutputs};
use llguidance::api::TopLevelGrammar;
use llguidance::JsonCompileOptions;
use serde_json::Value;

/// The JSON schema of `json_object`: any object.
fn any_object() -> Value {
    serde_json::json!({"type": "object"})
}

/// llguidance's options for the JSON of `spec`, stored in the schema as it expects them.
fn with_json_options(mut schema: Value, whitespace_pattern: Option<&str>) -> Result<Value, String> {
    if schema == Value::Bool(true) {
        schema = serde_json::json!({});
    }
    if !schema.is_object() {
        return Err(format!(
            "json must be a JSON schema object (or true), got {}",
            type_name(&schema)
        ));
    }
    let options = JsonCompileOptions {
        item_separator: ", ".into(),
        key_separator: ": ".into(),
        whitespace_flexible: false,
        whitespace_pattern: whitespace_pattern.map(str::to_string),
        ..JsonCompileOptions::default()
    };
    options.apply_to(&mut schema);
    Ok(schema)
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A Lark grammar whose language is exactly `choices`.
fn choice_grammar(choices: &[String]) -> String {
    let alternatives: Vec<String> = choices
        .iter()
        .map(|c| serde_json::to_string(c).unwrap_or_default())
        .collect();
    format!("start: {}\n", alternatives.join(" | "))
}

/// The grammar of `spec`; an error names what is wrong in the user's terms.
pub(super) fn grammar_of(spec: &StructuredOutputs) -> Result<TopLevelGrammar, String> {
    let ws = spec.whitespace_pattern.as_deref();
    Ok(match &spec.constraint {
        Constraint::Json(text) => {
            let schema: Value =
                serde_json::from_str(text).map_err(|e| format!("json is not valid JSON: {e}"))?;
            TopLevelGrammar::from_json_schema(with_json_options(schema, ws)?)
        }
        Constraint::JsonObject => TopLevelGrammar::from_json_schema(with_json_options(any_object(), ws)?),
        Constraint::Regex(regex) => TopLevelGrammar::from_regex(regex),
        Constraint::Choice(choices) => TopLevelGrammar::from_lark(choice_grammar(choices)),
        Constraint::Grammar(lark) => TopLevelGrammar::from_lark(lark.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_are_quoted_lark_literals() {
        let grammar = choice_grammar(&["a\"b".into(), "x\ny".into()]);
        assert_eq!(grammar, "start: \"a\\\"b\" | \"x\\ny\"\n");
    }

    #[test]
    fn json_must_be_a_schema_object() {
        let err = with_json_options(serde_json::json!(3), None).unwrap_err();
        assert!(err.contains("got a number"), "{err}");
        let schema = with_json_options(serde_json::json!(true), Some(" ?")).unwrap();
        assert_eq!(schema["x-guidance"]["whitespace_pattern"], " ?");
    }
}
