//! A serde helper the config sections share.

use serde::Deserialize;

/// Deserializes a fixed-size array from a sequence of exactly `N` values. serde's own
/// array impl stops reading after `N` and figment does not complain about the rest, so
/// `betas: [0.9, 0.99, 0.5]` was silently cut to two values.
pub fn exactly_n<'de, D, T, const N: usize>(deserializer: D) -> Result<[T; N], D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    let values = Vec::<T>::deserialize(deserializer)?;
    let len = values.len();
    values.try_into().map_err(|_| serde::de::Error::invalid_length(len, &format!("exactly {N} values").as_str()))
}
