//! JSON Patch (RFC 6902) over JSON Pointers (RFC 6901), for the restore's
//! `json-patch-file` rules.
//!
//! - Operations: `add`, `remove`, `replace`, `move`, `copy`, `test`.
//! - Pointers: `""` is the whole document; `/a/b` walks members and array indexes;
//!   `~1` stands for `/` and `~0` for `~` in a token; `-` is the end of an array
//!   (for `add`). An index has no leading zeros.
//! - A patch is all or nothing: [`Patch::apply`] works on a copy and returns the
//!   first failing operation's index and reason, leaving the input unchanged.
//! - `test` compares as JSON values; numbers compare by value (`1` equals `1.0`).

use serde_json::{Map, Value};

/// A parsed JSON Pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    /// As written (for messages).
    pub text: String,
    /// Decoded reference tokens.
    tokens: Vec<String>,
}

impl Pointer {
    /// Parses `text`; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Pointer, String> {
        if text.is_empty() {
            return Ok(Pointer {
                text: String::new(),
                tokens: Vec::new(),
            });
        }
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!(
                "`{text}` is not a JSON pointer: it must be empty or start with `/` (e.g. /spec/replicas)"
            ));
        };
        let mut tokens = Vec::new();
        for raw in rest.split('/') {
            let mut token = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                if c != '~' {
                    token.push(c);
                    continue;
                }
                match chars.next() {
                    Some('0') => token.push('~'),
                    Some('1') => token.push('/'),
                    _ => {
                        return Err(format!(
                            "`{text}`: `~` must be followed by 0 (for ~) or 1 (for /)"
                        ))
                    }
                }
            }
            tokens.push(token);
        }
        Ok(Pointer {
            text: text.to_string(),
            tokens,
        })
    }

    /// Whether `self` is a proper prefix of `other` (moving a value into its own child).
    fn is_proper_prefix_of(&self, other: &Pointer) -> bool {
        self.tokens.len() < other.tokens.len() && other.tokens.starts_with(&self.tokens)
    }
}

/// One operation.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Sets a member, inserts into an array, or replaces the whole document.
    Add { path: Pointer, value: Value },
    /// Removes what is there (it must be there).
    Remove { path: Pointer },
    /// Replaces what is there (it must be there).
    Replace { path: Pointer, value: Value },
    /// Removes `from` and adds its value at `path`.
    Move { from: Pointer, path: Pointer },
    /// Adds a copy of `from`'s value at `path`.
    Copy { from: Pointer, path: Pointer },
    /// Fails unless the value at `path` equals `value`.
    Test { path: Pointer, value: Value },
}

impl Op {
    /// The operation's name, as written.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Add { .. } => "add",
            Op::Remove { .. } => "remove",
            Op::Replace { .. } => "replace",
            Op::Move { .. } => "move",
            Op::Copy { .. } => "copy",
            Op::Test { .. } => "test",
        }
    }

    /// The target path.
    pub fn path(&self) -> &Pointer {
        match self {
            Op::Add { path, .. }
            | Op::Remove { path }
            | Op::Replace { path, .. }
            | Op::Move { path, .. }
            | Op::Copy { path, .. }
            | Op::Test { path, .. } => path,
        }
    }

    /// Parses one operation object (`{"op": "add", "path": "/a", "value": 1}`).
    pub fn parse(v: &Value) -> Result<Op, String> {
        let Some(o) = v.as_object() else {
            return Err(format!(
                "an operation must be an object like {{\"op\": \"replace\", \"path\": \"/spec/replicas\", \"value\": 1}}, not {v}"
            ));
        };
        let op = o.get("op").and_then(Value::as_str).ok_or_else(|| {
            "missing `op` (one of add, remove, replace, move, copy, test)".to_string()
        })?;
        let pointer = |field: &str| -> Result<Pointer, String> {
            match o.get(field) {
                Some(Value::String(s)) => Pointer::parse(s),
                Some(other) => Err(format!("`{field}` must be a string, not {other}")),
                None => Err(format!("`{op}` needs `{field}`")),
            }
        };
        let value = || -> Result<Value, String> {
            o.get("value")
                .cloned()
                .ok_or_else(|| format!("`{op}` needs `value`"))
        };
        Ok(match op {
            "add" => Op::Add {
                path: pointer("path")?,
                value: value()?,
            },
            "remove" => Op::Remove {
                path: pointer("path")?,
            },
            "replace" => Op::Replace {
                path: pointer("path")?,
                value: value()?,
            },
            "move" => Op::Move {
                from: pointer("from")?,
                path: pointer("path")?,
            },
            "copy" => Op::Copy {
                from: pointer("from")?,
                path: pointer("path")?,
            },
            "test" => Op::Test {
                path: pointer("path")?,
                value: value()?,
            },
            other => {
                return Err(format!(
                    "unknown op `{other}` (use add, remove, replace, move, copy or test)"
                ))
            }
        })
    }
}

/// A sequence of operations, applied in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Patch(pub Vec<Op>);

/// Why an operation of a patch failed: its index (0-based) and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpFailed {
    /// Which operation.
    pub index: usize,
    /// What went wrong, naming the path.
    pub problem: String,
}

impl Patch {
    /// Parses a JSON array of operations.
    pub fn parse(v: &Value) -> Result<Patch, OpFailed> {
        let Some(list) = v.as_array() else {
            return Err(OpFailed {
                index: 0,
                problem: format!("a patch must be an array of operations, not {v}"),
            });
        };
        list.iter()
            .enumerate()
            .map(|(index, o)| Op::parse(o).map_err(|problem| OpFailed { index, problem }))
            .collect::<Result<Vec<_>, _>>()
            .map(Patch)
    }

    /// `doc` with every operation applied, or the first that fails.
    pub fn apply(&self, doc: &Value) -> Result<Value, OpFailed> {
        let mut out = doc.clone();
        for (index, op) in self.0.iter().enumerate() {
            apply_op(&mut out, op).map_err(|problem| OpFailed { index, problem })?;
        }
        Ok(out)
    }
}

/// An array index token: digits without leading zeros.
fn index(token: &str, path: &Pointer) -> Result<usize, String> {
    let ok = !token.is_empty()
        && token.bytes().all(|b| b.is_ascii_digit())
        && (token == "0" || !token.starts_with('0'));
    ok.then(|| token.parse::<usize>().ok())
        .flatten()
        .ok_or_else(|| format!("{}: `{token}` is not an array index", path.text))
}

fn get<'a>(doc: &'a Value, path: &Pointer) -> Result<&'a Value, String> {
    let mut at = doc;
    for (depth, t) in path.tokens.iter().enumerate() {
        let gone = || missing(path, depth);
        at = match at {
            Value::Object(m) => m.get(t).ok_or_else(gone)?,
            Value::Array(a) => a.get(index(t, path)?).ok_or_else(gone)?,
            _ => return Err(gone()),
        };
    }
    Ok(at)
}

fn get_mut<'a>(doc: &'a mut Value, path: &Pointer, upto: usize) -> Result<&'a mut Value, String> {
    let mut at = doc;
    for (depth, t) in path.tokens[..upto].iter().enumerate() {
        at = match at {
            Value::Object(m) => m.get_mut(t).ok_or_else(|| missing(path, depth))?,
            Value::Array(a) => {
                let i = index(t, path)?;
                a.get_mut(i).ok_or_else(|| missing(path, depth))?
            }
            _ => return Err(missing(path, depth)),
        };
    }
    Ok(at)
}

/// "`/a/b`: nothing at /a" for a walk that stopped at token `depth`.
fn missing(path: &Pointer, depth: usize) -> String {
    let upto: Vec<String> = path.tokens[..=depth]
        .iter()
        .map(|t| t.replace('~', "~0").replace('/', "~1"))
        .collect();
    format!("{}: nothing at /{}", path.text, upto.join("/"))
}

fn add(doc: &mut Value, path: &Pointer, value: Value) -> Result<(), String> {
    let Some((last, _)) = path.tokens.split_last() else {
        *doc = value;
        return Ok(());
    };
    match get_mut(doc, path, path.tokens.len() - 1)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
        }
        Value::Array(a) => {
            if last == "-" {
                a.push(value);
            } else {
                let i = index(last, path)?;
                if i > a.len() {
                    return Err(format!(
                        "{}: index {i} is past the end of the array (length {})",
                        path.text,
                        a.len()
                    ));
                }
                a.insert(i, value);
            }
        }
        other => {
            return Err(format!(
                "{}: the parent is {}, not an object or array",
                path.text,
                kind_of(other)
            ))
        }
    }
    Ok(())
}

fn remove(doc: &mut Value, path: &Pointer) -> Result<Value, String> {
    let Some((last, _)) = path.tokens.split_last() else {
        return Err("the whole object cannot be removed (path \"\")".into());
    };
    let depth = path.tokens.len() - 1;
    match get_mut(doc, path, depth)? {
        Value::Object(m) => m.remove(last).ok_or_else(|| missing(path, depth)),
        Value::Array(a) => {
            let i = index(last, path)?;
            if i < a.len() {
                Ok(a.remove(i))
            } else {
                Err(missing(path, depth))
            }
        }
        _ => Err(missing(path, depth)),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// JSON equality with numbers compared by value.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => same_members(x, y),
        _ => a == b,
    }
}

fn same_members(x: &Map<String, Value>, y: &Map<String, Value>) -> bool {
    x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
}

fn apply_op(doc: &mut Value, op: &Op) -> Result<(), String> {
    match op {
        Op::Add { path, value } => add(doc, path, value.clone()),
        Op::Remove { path } => remove(doc, path).map(drop),
        Op::Replace { path, value } => {
            let at = get_mut(doc, path, path.tokens.len())?;
            *at = value.clone();
            Ok(())
        }
        Op::Move { from, path } => {
            if from.is_proper_prefix_of(path) {
                return Err(format!(
                    "cannot move {} into its own child {}",
                    from.text, path.text
                ));
            }
            let v = remove(doc, from)?;
            add(doc, path, v)
        }
        Op::Copy { from, path } => {
            let v = get(doc, from)?.clone();
            add(doc, path, v)
        }
        Op::Test { path, value } => {
            let at = get(doc, path)?;
            if same(at, value) {
                Ok(())
            } else {
                Err(format!(
                    "{}: the test wants {value}, the object has {at}",
                    path.text
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(doc: Value, ops: Value) -> Result<Value, OpFailed> {
        Patch::parse(&ops).unwrap().apply(&doc)
    }

    #[test]
    fn pointers_decode_escapes() {
        let p = Pointer::parse("/a~1b/m~0n/~01").unwrap();
        assert_eq!(p.tokens, vec!["a/b", "m~n", "~1"]);
        assert_eq!(Pointer::parse("").unwrap().tokens, Vec::<String>::new());
        assert_eq!(Pointer::parse("/").unwrap().tokens, vec![""]);
        assert!(Pointer::parse("a/b")
            .unwrap_err()
            .contains("start with `/`"));
        assert!(Pointer::parse("/a~2").unwrap_err().contains("~"));
        let doc = json!({"a/b": {"m~n": 1}, "": 2});
        assert_eq!(
            get(&doc, &Pointer::parse("/a~1b/m~0n").unwrap()),
            Ok(&json!(1))
        );
        assert_eq!(get(&doc, &Pointer::parse("/").unwrap()), Ok(&json!(2)));
    }

    #[test]
    fn rfc6902_examples() {
        // A.1, A.2, A.3, A.4 (RFC 6902 appendix A).
        assert_eq!(
            run(
                json!({"foo": "bar"}),
                json!([{"op": "add", "path": "/baz", "value": "qux"}])
            ),
            Ok(json!({"baz": "qux", "foo": "bar"}))
        );
        assert_eq!(
            run(
                json!({"foo": ["bar", "baz"]}),
                json!([{"op": "add", "path": "/foo/1", "value": "qux"}])
            ),
            Ok(json!({"foo": ["bar", "qux", "baz"]}))
        );
        assert_eq!(
            run(
                json!({"baz": "qux", "foo": "bar"}),
                json!([{"op": "remove", "path": "/baz"}])
            ),
            Ok(json!({"foo": "bar"}))
        );
        assert_eq!(
            run(
                json!({"foo": ["bar", "qux", "baz"]}),
                json!([{"op": "remove", "path": "/foo/1"}])
            ),
            Ok(json!({"foo": ["bar", "baz"]}))
        );
        // A.5 replace, A.6 move, A.7 move in an array, A.8 test, A.16 add to the end.
        assert_eq!(
            run(
                json!({"baz": "qux", "foo": "bar"}),
                json!([{"op": "replace", "path": "/baz", "value": "boo"}])
            ),
            Ok(json!({"baz": "boo", "foo": "bar"}))
        );
        assert_eq!(
            run(
                json!({"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}}),
                json!([{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}])
            ),
            Ok(json!({"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}}))
        );
        assert_eq!(
            run(
                json!({"foo": ["all", "grass", "cows", "eat"]}),
                json!([{"op": "move", "from": "/foo/1", "path": "/foo/3"}])
            ),
            Ok(json!({"foo": ["all", "cows", "eat", "grass"]}))
        );
        assert!(run(
            json!({"baz": "qux", "foo": ["a", 2, "c"]}),
            json!([{"op": "test", "path": "/baz", "value": "qux"},
                   {"op": "test", "path": "/foo/1", "value": 2.0}])
        )
        .is_ok());
        assert_eq!(
            run(
                json!({"foo": ["bar"]}),
                json!([{"op": "add", "path": "/foo/-", "value": ["abc", "def"]}])
            ),
            Ok(json!({"foo": ["bar", ["abc", "def"]]}))
        );
        // A.10 add to a missing parent fails; A.14 ~ escapes; copy.
        let e = run(
            json!({"foo": "bar"}),
            json!([{"op": "add", "path": "/baz/bat", "value": "q"}]),
        )
        .unwrap_err();
        assert_eq!(e.index, 0);
        assert!(e.problem.contains("nothing at /baz"), "{}", e.problem);
        assert!(run(
            json!({"/": 9, "~1": 10}),
            json!([{"op": "test", "path": "/~01", "value": 10}])
        )
        .is_ok());
        assert_eq!(
            run(
                json!({"a": {"b": 1}}),
                json!([{"op": "copy", "from": "/a", "path": "/c"}])
            ),
            Ok(json!({"a": {"b": 1}, "c": {"b": 1}}))
        );
    }

    #[test]
    fn failures_name_the_op_and_path() {
        let ops = json!([{"op": "replace", "path": "/a", "value": 2},
                         {"op": "test", "path": "/a", "value": 3}]);
        let e = run(json!({"a": 1}), ops).unwrap_err();
        assert_eq!(e.index, 1);
        assert_eq!(e.problem, "/a: the test wants 3, the object has 2");
        for (ops, want) in [
            (json!([{"op": "remove", "path": "/x"}]), "/x: nothing at /x"),
            (
                json!([{"op": "replace", "path": "/l/5", "value": 0}]),
                "/l/5: nothing at /l/5",
            ),
            (
                json!([{"op": "add", "path": "/l/01", "value": 0}]),
                "`01` is not an array index",
            ),
            (
                json!([{"op": "add", "path": "/l/3", "value": 0}]),
                "past the end",
            ),
            (
                json!([{"op": "move", "from": "/l", "path": "/l/0"}]),
                "own child",
            ),
            (json!([{"op": "remove", "path": ""}]), "whole object"),
        ] {
            let e = run(json!({"l": [1, 2]}), ops).unwrap_err();
            assert!(e.problem.contains(want), "{} vs {want}", e.problem);
        }
        for (ops, want) in [
            (json!([{"op": "frob", "path": "/a"}]), "unknown op `frob`"),
            (json!([{"op": "add", "path": "/a"}]), "needs `value`"),
            (json!([{"op": "move", "path": "/a"}]), "needs `from`"),
            (json!([{"path": "/a"}]), "missing `op`"),
            (json!({"op": "add"}), "must be an array"),
        ] {
            let e = Patch::parse(&ops).unwrap_err();
            assert!(e.problem.contains(want), "{} vs {want}", e.problem);
        }
    }
}
