//! Reading requests, bounded: JSON bodies up to [`MAX_BODY_BYTES`] (413 past it, read no
//! further), parsed with the path of the field at fault in every error, lists that stop at
//! their bound while parsing, and query strings read in order.

use std::fmt;
use std::marker::PhantomData;

use axum::body::Body;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use futures_util::StreamExt;
use serde::de::{DeserializeOwned, Deserializer, SeqAccess, Visitor};

use super::error::ApiError;

/// The largest request body read (1 MiB: 1 000 descriptors fit many times over).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// How much of a body past [`MAX_BODY_BYTES`] is read and dropped, so that its sender, still
/// sending, gets the 413 rather than a reset connection; past it the connection is closed.
const DRAINED_BYTES: usize = 16 << 20;

/// Reads `body` as JSON into `T`, or answers 400 naming the field at fault (413 when the body
/// is larger than [`MAX_BODY_BYTES`]; no more than that is kept).
pub async fn json<T: DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    let mut bytes = Vec::new();
    let mut stream = body.into_data_stream();
    let mut seen = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?;
        seen += chunk.len();
        if seen > MAX_BODY_BYTES {
            bytes = Vec::new();
            if seen > DRAINED_BYTES {
                break;
            }
        } else {
            bytes.extend_from_slice(&chunk);
        }
    }
    if seen > MAX_BODY_BYTES {
        return Err(ApiError::too_large(MAX_BODY_BYTES));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("a JSON object is required"));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(&bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        match path.as_str() {
            "." | "" => ApiError::bad_request(format!("invalid JSON: {inner}")),
            _ => ApiError::field(path, inner),
        }
    })?;
    deserializer
        .end()
        .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
    Ok(value)
}

/// Path parameters, or 400 (as JSON) when they cannot be read.
#[derive(Debug)]
pub struct Segments<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Segments<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Self(value)),
            Err(rejection) => Err(ApiError::bad_request(rejection.body_text())),
        }
    }
}

/// Deserializes a list of at most `N` items, failing at the first one past it (so a huge
/// list costs no more than `N` items), and of at least one.
pub fn bounded<'de, D, T, const N: usize>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    struct Bounded<T, const N: usize>(PhantomData<T>);

    impl<'de, T: serde::Deserialize<'de>, const N: usize> Visitor<'de> for Bounded<T, N> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a list of 1 to {N} items")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(N));
            while let Some(item) = seq.next_element()? {
                if items.len() == N {
                    return Err(serde::de::Error::custom(format!("at most {N} items")));
                }
                items.push(item);
            }
            if items.is_empty() {
                return Err(serde::de::Error::custom("at least one item is needed"));
            }
            Ok(items)
        }
    }

    deserializer.deserialize_seq(Bounded::<T, N>(PhantomData))
}

/// The query string's pairs, decoded, in order.
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

/// Takes the one value of parameter `name` out of `pairs`: 400 when it is missing (and
/// `required`) or given twice.
pub fn take_one(
    pairs: &mut Vec<(String, String)>,
    name: &str,
    required: bool,
) -> Result<Option<String>, ApiError> {
    let mut found = None;
    let mut twice = false;
    pairs.retain(|(key, value)| {
        if key != name {
            return true;
        }
        twice |= found.replace(value.clone()).is_some();
        false
    });
    if twice {
        return Err(ApiError::field(name, "given more than once"));
    }
    if required && found.is_none() {
        return Err(ApiError::field(name, "required"));
    }
    Ok(found)
}

/// 400 for the first parameter left in `pairs` (none is expected).
pub fn no_more(pairs: &[(String, String)]) -> Result<(), ApiError> {
    match pairs.first() {
        Some((name, _)) => Err(ApiError::field(name.clone(), "unknown parameter")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Request {
        #[serde(deserialize_with = "bounded::<_, _, 3>")]
        items: Vec<Item>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Item {
        #[allow(dead_code)] // read by serde
        n: u64,
    }

    async fn parse(text: &str) -> Result<Request, ApiError> {
        json(Body::from(text.to_owned())).await
    }

    fn field(error: &ApiError) -> Option<String> {
        error.body().field.clone()
    }

    #[tokio::test]
    async fn errors_name_the_field_at_fault() {
        assert_eq!(
            parse(r#"{"items":[{"n":1}]}"#).await.unwrap().items.len(),
            1
        );
        let wrong_type = parse(r#"{"items":[{"n":1},{"n":"2"}]}"#).await.unwrap_err();
        assert_eq!(field(&wrong_type).as_deref(), Some("items[1].n"));
        let unknown = parse(r#"{"items":[{"n":1,"m":2}]}"#).await.unwrap_err();
        assert!(
            unknown.body().message.contains("unknown field `m`"),
            "{unknown:?}"
        );
        let too_many = parse(r#"{"items":[{"n":1},{"n":1},{"n":1},{"n":1}]}"#)
            .await
            .unwrap_err();
        assert_eq!(field(&too_many).as_deref(), Some("items"));
        assert!(too_many.body().message.contains("at most 3"));
        assert!(parse(r#"{"items":[]}"#).await.is_err());
        for bad in ["", "   ", "{", r#"{"items":[{"n":1}]} trailing"#, "[]"] {
            assert_eq!(
                parse(bad).await.unwrap_err().status(),
                axum::http::StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn a_body_past_the_bound_is_refused_unread() {
        let huge = format!(
            r#"{{"items":[{}]}}"#,
            r#"{"n":1},"#.repeat(MAX_BODY_BYTES / 4)
        );
        let error = parse(&huge).await.unwrap_err();
        assert_eq!(error.status(), axum::http::StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn query_parameters_are_taken_once_and_in_order() {
        let mut pairs = query_pairs(Some("domain=d&user=%C3%BC&path=%2Fa+b&user=2"));
        assert_eq!(
            take_one(&mut pairs, "domain", true).unwrap().as_deref(),
            Some("d")
        );
        assert_eq!(
            pairs,
            [
                ("user".to_owned(), "ü".to_owned()),
                ("path".to_owned(), "/a b".to_owned()),
                ("user".to_owned(), "2".to_owned())
            ]
        );
        assert!(take_one(&mut pairs, "user", false).is_err());
        let mut none = query_pairs(None);
        assert!(take_one(&mut none, "domain", true).is_err());
        assert_eq!(take_one(&mut none, "limit", false).unwrap(), None);
        assert!(no_more(&none).is_ok());
        assert_eq!(
            field(&no_more(&[("x".into(), "1".into())]).unwrap_err()).as_deref(),
            Some("x")
        );
    }
}
