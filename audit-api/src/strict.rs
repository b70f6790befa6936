//! A JSON value read as `serde_json::Value` reads it, except that an object repeating a key is an
//! error (serde_json keeps the last value silently).
//! Used for what a reader must not read two ways: an export line (`audctl verify`) and a request
//! body of the server (a proxy keeping the first of two `tenantId`s would see another event).

use std::fmt;

use serde::de::{Deserialize, Deserializer, Error, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Number, Value};

pub struct Strict(pub Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(value) = map.next_value()?;
            // One lookup per member: the server reads every request body this way.
            match object.entry(key) {
                Entry::Vacant(slot) => {
                    slot.insert(value);
                }
                Entry::Occupied(slot) => {
                    return Err(A::Error::custom(format_args!("the key {:?} appears twice in one object", slot.key())));
                }
            }
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::Strict;

    /// The same value as serde_json's own reading, for what the server writes (a second
    /// implementation as the reference), and a repeated key refused at any depth.
    #[test]
    fn reads_as_serde_json_and_refuses_repeated_keys() {
        let line = r#"{"a":{"b":[1,-2,3.5e-7,1e21,"\u00e9\ud83d\ude00",null,true]},"c":18446744073709551615}"#;
        let Strict(strict) = serde_json::from_str(line).expect("strict");
        assert_eq!(strict, serde_json::from_str::<serde_json::Value>(line).expect("plain"));
        for bad in [r#"{"a":1,"a":2}"#, r#"{"x":[{"k":1,"k":1}]}"#] {
            let e = serde_json::from_str::<Strict>(bad).err().expect("refused");
            assert_eq!(e.classify(), serde_json::error::Category::Data, "{e}");
            assert!(e.to_string().contains("appears twice"), "{e}");
        }
    }
}
