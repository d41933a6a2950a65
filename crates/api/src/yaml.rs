//! A small block-style YAML writer for the generated CRDs, so the committed files read
//! like hand-written manifests. Strings that could be mistaken for another type are
//! written as JSON strings, which YAML reads as double-quoted scalars.

use serde_json::Value;

pub(crate) fn write(out: &mut String, v: &Value, indent: usize, _in_list: bool) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, val) in map {
                push_indent(out, indent);
                out.push_str(&scalar_str(k));
                out.push(':');
                entry_value(out, val, indent);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for item in items {
                match item {
                    Value::Object(m) if !m.is_empty() => {
                        let mut inner = String::new();
                        write(&mut inner, item, indent + 2, true);
                        push_indent(out, indent);
                        out.push_str("- ");
                        out.push_str(&inner[indent + 2..]);
                    }
                    Value::Array(a) if !a.is_empty() => {
                        push_indent(out, indent);
                        out.push_str("-\n");
                        write(out, item, indent + 2, true);
                    }
                    _ => {
                        push_indent(out, indent);
                        out.push_str("- ");
                        out.push_str(&inline(item));
                        out.push('\n');
                    }
                }
            }
        }
        other => {
            push_indent(out, indent);
            out.push_str(&inline(other));
            out.push('\n');
        }
    }
}

fn entry_value(out: &mut String, val: &Value, indent: usize) {
    match val {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            write(out, val, indent + 2, false);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            write(out, val, indent, true);
        }
        _ => {
            out.push(' ');
            out.push_str(&inline(val));
            out.push('\n');
        }
    }
}

fn push_indent(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

fn inline(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => scalar_str(s),
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
    }
}

fn scalar_str(s: &str) -> String {
    const RESERVED: &[&str] = &[
        "true", "false", "null", "yes", "no", "on", "off", "y", "n", "~",
    ];
    let plain = s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        && !RESERVED.contains(&s.to_ascii_lowercase().as_str());
    if plain {
        s.to_string()
    } else {
        serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_structures() {
        let v = json!({"a": {"b": [1, {"c": "x y", "d": []}], "e": "true"}, "f": {}});
        let mut out = String::new();
        write(&mut out, &v, 0, false);
        assert_eq!(
            out,
            "a:\n  b:\n  - 1\n  - c: \"x y\"\n    d: []\n  e: \"true\"\nf: {}\n"
        );
    }
}
