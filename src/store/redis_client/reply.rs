//! Reading script replies: every unexpected shape or value is an error
//! ([`RedisFailure::Garbage`] naming what was expected and what came), never
//! a default. A cap enforcer must not take a count it cannot read for 0.

use redis::Value;

use super::RedisFailure;

fn garbage(expected: &str, found: &Value) -> RedisFailure {
    RedisFailure::Garbage(format!("expected {expected}, got {found:?}"))
}

/// The items of an array reply.
pub fn array(reply: &Value) -> Result<&[Value], RedisFailure> {
    match reply {
        Value::Array(items) => Ok(items),
        other => Err(garbage("an array", other)),
    }
}

/// Item `index` of an array reply.
pub fn item<'v>(
    items: &'v [Value],
    index: usize,
    reply: &Value,
) -> Result<&'v Value, RedisFailure> {
    items
        .get(index)
        .ok_or_else(|| garbage(&format!("at least {} items", index + 1), reply))
}

/// An integer, sent as a number or as its decimal text.
pub fn integer(value: &Value) -> Result<i64, RedisFailure> {
    let parsed = match value {
        Value::Int(n) => Some(*n),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok().and_then(|t| t.parse().ok()),
        Value::SimpleString(text) => text.parse().ok(),
        _ => None,
    };
    parsed.ok_or_else(|| garbage("an integer", value))
}

/// A non-negative integer.
pub fn unsigned(value: &Value) -> Result<u64, RedisFailure> {
    u64::try_from(integer(value)?).map_err(|_| garbage("a non-negative integer", value))
}

/// A text.
pub fn text(value: &Value) -> Result<&str, RedisFailure> {
    match value {
        Value::BulkString(bytes) => {
            std::str::from_utf8(bytes).map_err(|_| garbage("UTF-8 text", value))
        }
        Value::SimpleString(text) => Ok(text),
        _ => Err(garbage("a text", value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_that_is_not_a_number_is_an_error_not_zero() {
        assert_eq!(integer(&Value::Int(7)).unwrap(), 7);
        assert_eq!(integer(&Value::BulkString(b"42".to_vec())).unwrap(), 42);
        assert_eq!(integer(&Value::SimpleString("-3".into())).unwrap(), -3);
        for bad in [
            Value::BulkString(b"12abc".to_vec()),
            Value::BulkString(Vec::new()),
            Value::Nil,
            Value::Array(Vec::new()),
        ] {
            let error = integer(&bad).unwrap_err().to_string();
            assert!(error.contains("expected an integer"), "{error}");
        }
        assert!(unsigned(&Value::Int(-1)).is_err());
        assert!(array(&Value::Int(1)).is_err());
        let reply = Value::Array(vec![Value::Int(1)]);
        let items = array(&reply).unwrap();
        assert!(item(items, 1, &reply)
            .unwrap_err()
            .to_string()
            .contains("at least 2 items"));
        assert_eq!(
            text(&Value::BulkString(b"allow".to_vec())).unwrap(),
            "allow"
        );
        assert!(text(&Value::Int(1)).is_err());
    }
}
