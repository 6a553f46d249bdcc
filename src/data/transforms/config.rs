//! `data.transforms:` the augmentation lists as the configuration spells them: one-key maps
//! named and parameterised as torchvision's `transforms.v2` classes, with their defaults.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

use crate::serde_exact::exactly_n;

/// `data.transforms:` what is done to each image of the training and of the evaluation
/// split, in order. Both lists are empty by default: an image is then only resized to
/// `data.image_size`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransformsConfig {
    /// Applied to training examples.
    pub train: Vec<Transform>,
    /// Applied to validation examples.
    pub eval: Vec<Transform>,
}

/// One transform: in YAML a map of one key, the torchvision class's name, to its
/// parameters (`- RandomHorizontalFlip: {p: 0.5}`).
#[derive(Debug, Clone, PartialEq)]
pub enum Transform {
    /// A random part of the image, resized to `size`.
    RandomResizedCrop(RandomResizedCrop),
    /// A mirror image, with probability `p`.
    RandomHorizontalFlip(RandomHorizontalFlip),
    /// The image resized (bilinear, antialiased).
    Resize(Resize),
    /// The central part of the image, padded with zeros where the image is smaller.
    CenterCrop(CenterCrop),
    /// `(x - mean) / std` per channel; the last transform when present.
    Normalize(Normalize),
    /// Brightness, contrast and saturation changed by random factors, in a random order.
    ColorJitter(ColorJitter),
}

/// The transforms' names, as [`Transform::name`] gives them.
const NAMES: &[&str] =
    &["RandomResizedCrop", "RandomHorizontalFlip", "Resize", "CenterCrop", "Normalize", "ColorJitter"];

/// A map of exactly one name to its parameters: serde's derived enum would take a map of
/// two names as the last one alone, silently dropping the other transform.
impl<'de> Deserialize<'de> for Transform {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TransformVisitor;
        impl<'de> Visitor<'de> for TransformVisitor {
            type Value = Transform;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of one transform's name to its parameters, such as {RandomHorizontalFlip: {p: 0.5}}")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Transform, A::Error> {
                let Some(name) = map.next_key::<String>()? else {
                    return Err(de::Error::invalid_length(0, &self));
                };
                let t = match name.as_str() {
                    "RandomResizedCrop" => Transform::RandomResizedCrop(map.next_value()?),
                    "RandomHorizontalFlip" => Transform::RandomHorizontalFlip(map.next_value()?),
                    "Resize" => Transform::Resize(map.next_value()?),
                    "CenterCrop" => Transform::CenterCrop(map.next_value()?),
                    "Normalize" => Transform::Normalize(map.next_value()?),
                    "ColorJitter" => Transform::ColorJitter(map.next_value()?),
                    other => return Err(de::Error::unknown_variant(other, NAMES)),
                };
                match map.next_key::<String>()? {
                    Some(other) => Err(de::Error::custom(format!(
                        "`{name}` and `{other}` are in one list item: give each transform its own `- ` item"
                    ))),
                    None => Ok(t),
                }
            }
        }
        d.deserialize_map(TransformVisitor)
    }
}

/// A plain map of one entry, written as it is read: serde's derived enum would write YAML
/// tags (`!Resize`), which the run folder's `config.yaml` could not be read back from.
impl Serialize for Transform {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(1))?;
        let name = self.name();
        match self {
            Self::RandomResizedCrop(t) => map.serialize_entry(name, t)?,
            Self::RandomHorizontalFlip(t) => map.serialize_entry(name, t)?,
            Self::Resize(t) => map.serialize_entry(name, t)?,
            Self::CenterCrop(t) => map.serialize_entry(name, t)?,
            Self::Normalize(t) => map.serialize_entry(name, t)?,
            Self::ColorJitter(t) => map.serialize_entry(name, t)?,
        }
        map.end()
    }
}

impl Transform {
    /// The torchvision class's name, as the configuration spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::RandomResizedCrop(_) => "RandomResizedCrop",
            Self::RandomHorizontalFlip(_) => "RandomHorizontalFlip",
            Self::Resize(_) => "Resize",
            Self::CenterCrop(_) => "CenterCrop",
            Self::Normalize(_) => "Normalize",
            Self::ColorJitter(_) => "ColorJitter",
        }
    }
}

/// torchvision's `RandomResizedCrop(size, scale, ratio)`: a crop of a random share of the
/// area (`scale`) and random aspect ratio (`ratio`, width / height), resized to `size`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomResizedCrop {
    /// The output size.
    pub size: Size,
    /// The crop's share of the image's area, `[low, high]`; torchvision's default `[0.08, 1.0]`.
    #[serde(default = "default_scale", deserialize_with = "exactly_n")]
    pub scale: [f64; 2],
    /// The crop's aspect ratio (width / height) before the resize, `[low, high]`, drawn
    /// log-uniformly; torchvision's default `[3/4, 4/3]`.
    #[serde(default = "default_ratio", deserialize_with = "exactly_n")]
    pub ratio: [f64; 2],
}

fn default_scale() -> [f64; 2] {
    [0.08, 1.0]
}

fn default_ratio() -> [f64; 2] {
    [3.0 / 4.0, 4.0 / 3.0]
}

/// torchvision's `RandomHorizontalFlip(p)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomHorizontalFlip {
    /// The probability of the flip; torchvision's default 0.5.
    #[serde(default = "default_p")]
    pub p: f64,
}

fn default_p() -> f64 {
    0.5
}

/// torchvision's `Resize(size, max_size)`, bilinear with antialiasing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resize {
    /// `[height, width]`, or one number: the smaller edge's new length, the other edge
    /// keeping the aspect ratio.
    pub size: Size,
    /// With a one-number `size`: the longer edge's largest length (the image is made
    /// smaller still when it would be longer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<u32>,
}

/// torchvision's `CenterCrop(size)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CenterCrop {
    /// The output size.
    pub size: Size,
}

/// torchvision's `Normalize(mean, std)`, on values in [0, 1].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalize {
    /// One value for every channel, or one per channel.
    pub mean: Vec<f64>,
    /// One value for every channel, or one per channel; none zero.
    pub std: Vec<f64>,
}

/// torchvision's `ColorJitter(brightness, contrast, saturation)` (no hue).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ColorJitter {
    /// How much to change the brightness; 0 (the default) leaves it.
    pub brightness: Jitter,
    /// How much to change the contrast; 0 (the default) leaves it.
    pub contrast: Jitter,
    /// How much to change the saturation; 0 (the default) leaves it.
    pub saturation: Jitter,
}

/// A size: one number or `[height, width]`. What one number means depends on the
/// transform, as in torchvision: a square for the crops, the smaller edge for `Resize`.
pub type Size = OneOrPair<u32>;

/// How much a `ColorJitter` factor varies: `x` (at least 0) draws it from
/// `[max(0, 1 - x), 1 + x]`, `[low, high]` from that range, as in torchvision.
pub type Jitter = OneOrPair<f64>;

/// One number or two, as sizes and jitters are written: `32` (or `[32]`), `[24, 32]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OneOrPair<T> {
    /// One number.
    One(T),
    /// Two numbers: `[height, width]`, `[low, high]`.
    Pair([T; 2]),
}

impl Size {
    /// `[height, width]` for a crop: one number is a square.
    pub fn square_or_exact(self) -> [u32; 2] {
        match self {
            Self::One(n) => [n, n],
            Self::Pair(hw) => hw,
        }
    }
}

impl Jitter {
    /// The range the factor is drawn from; `None` when it is always 1 (nothing changes),
    /// as torchvision leaves such a factor out.
    pub fn range(self) -> Option<[f64; 2]> {
        let [lo, hi] = match self {
            Self::One(x) => [(1.0 - x).max(0.0), 1.0 + x],
            Self::Pair(r) => r,
        };
        (!(lo == 1.0 && hi == 1.0)).then_some([lo, hi])
    }
}

impl Default for Jitter {
    fn default() -> Self {
        Self::One(0.0)
    }
}

impl<T: fmt::Display> fmt::Display for OneOrPair<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::One(n) => write!(f, "{n}"),
            Self::Pair([a, b]) => write!(f, "[{a}, {b}]"),
        }
    }
}

impl<T: Serialize> Serialize for OneOrPair<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::One(n) => n.serialize(s),
            Self::Pair(pair) => pair.serialize(s),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrPair<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct OneOrPairVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for OneOrPairVisitor<T> {
            type Value = OneOrPair<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number or a list of two")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<OneOrPair<T>, E> {
                T::deserialize(v.into_deserializer()).map(OneOrPair::One)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<OneOrPair<T>, E> {
                T::deserialize(v.into_deserializer()).map(OneOrPair::One)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<OneOrPair<T>, E> {
                T::deserialize(v.into_deserializer()).map(OneOrPair::One)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrPair<T>, A::Error> {
                let mut list = Vec::new();
                while let Some(v) = seq.next_element()? {
                    list.push(v);
                }
                let len = list.len();
                let mut list = list.into_iter();
                match (list.next(), list.next(), list.next()) {
                    (Some(a), None, _) => Ok(OneOrPair::One(a)),
                    (Some(a), Some(b), None) => Ok(OneOrPair::Pair([a, b])),
                    _ => Err(de::Error::invalid_length(len, &self)),
                }
            }
        }
        d.deserialize_any(OneOrPairVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The section as the configuration reads it: YAML into figment's values, then serde.
    fn parse(yaml: &str) -> Result<TransformsConfig, String> {
        let value: figment::value::Value = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
        TransformsConfig::deserialize(&value).map_err(|e| e.to_string())
    }

    #[test]
    fn the_issues_example_parses_with_torchvisions_defaults() {
        let c = parse(
            "train:
  - RandomResizedCrop: {size: 32, scale: [0.6, 1.0]}
  - RandomHorizontalFlip: {p: 0.5}
  - Normalize: {mean: [0.5], std: [0.5]}
eval:
  - Resize: {size: 36}
  - CenterCrop: {size: [32, 32]}
",
        )
        .unwrap();
        assert_eq!(
            c.train,
            [
                Transform::RandomResizedCrop(RandomResizedCrop {
                    size: Size::One(32),
                    scale: [0.6, 1.0],
                    ratio: [0.75, 4.0 / 3.0]
                }),
                Transform::RandomHorizontalFlip(RandomHorizontalFlip { p: 0.5 }),
                Transform::Normalize(Normalize { mean: vec![0.5], std: vec![0.5] }),
            ]
        );
        assert_eq!(
            c.eval,
            [
                Transform::Resize(Resize { size: Size::One(36), max_size: None }),
                Transform::CenterCrop(CenterCrop { size: Size::Pair([32, 32]) }),
            ]
        );
        // What the built-in defaults layer serializes reads back the same.
        let defaults = figment::value::Value::serialize(&c).unwrap();
        assert_eq!(TransformsConfig::deserialize(&defaults).unwrap(), c);
        // And what a run folder's config.yaml holds.
        let yaml = serde_yaml::to_string(&c).unwrap();
        assert!(yaml.contains("- RandomResizedCrop:\n"), "{yaml}");
        assert_eq!(parse(&yaml).unwrap(), c);
    }

    #[test]
    fn sizes_jitters_and_defaults_take_each_form() {
        let c = parse(
            "train:
  - RandomResizedCrop: {size: [24, 32]}
  - CenterCrop: {size: [32]}
  - RandomHorizontalFlip: {}
  - ColorJitter: {brightness: 0.4, saturation: [0.5, 1]}
  - Resize: {size: 30, max_size: 64}
",
        )
        .unwrap();
        assert_eq!(
            c.train[0],
            Transform::RandomResizedCrop(RandomResizedCrop {
                size: Size::Pair([24, 32]),
                scale: [0.08, 1.0],
                ratio: [0.75, 4.0 / 3.0]
            })
        );
        assert_eq!(c.train[1], Transform::CenterCrop(CenterCrop { size: Size::One(32) }));
        assert_eq!(c.train[2], Transform::RandomHorizontalFlip(RandomHorizontalFlip { p: 0.5 }));
        assert_eq!(
            c.train[3],
            Transform::ColorJitter(ColorJitter {
                brightness: Jitter::One(0.4),
                contrast: Jitter::One(0.0),
                saturation: Jitter::Pair([0.5, 1.0])
            })
        );
        assert_eq!(c.train[4], Transform::Resize(Resize { size: Size::One(30), max_size: Some(64) }));
        assert_eq!(c.eval, []);
        assert_eq!(Jitter::One(0.0).range(), None);
        assert_eq!(Jitter::Pair([0.5, 1.0]).range(), Some([0.5, 1.0]));
    }

    #[test]
    fn malformed_transforms_are_refused_naming_what_is_wrong() {
        let cases = [
            (
                "train: [RandomCrop: {size: 3}]",
                "unknown variant: found `RandomCrop`, expected `one of `RandomResizedCrop`",
            ),
            ("train: [RandomHorizontalFlip: {prob: 0.5}]", "unknown field: found `prob`, expected ``p``"),
            ("train: [CenterCrop: {size: [1, 2, 3]}]", "invalid length 3, expected a number or a list of two"),
            ("train: [CenterCrop: {size: -1}]", "`-1`"),
            ("train: [CenterCrop: {size: big}]", "found string \"big\", expected a number or a list of two"),
            ("train: [CenterCrop: {}]", "missing field `size`"),
            (
                "train: [RandomResizedCrop: {size: 3, scale: [0.1, 0.5, 1]}]",
                "invalid length 3, expected exactly 2 values",
            ),
            ("train: [ColorJitter: {hue: 0.1}]", "unknown field: found `hue`"),
            ("train: [ColorJitter: {contrast: []}]", "invalid length 0, expected a number or a list of two"),
            (
                "train: [{Resize: {size: 3}, CenterCrop: {size: 3}}]",
                "`CenterCrop` and `Resize` are in one list item: give each transform its own `- ` item",
            ),
            ("train: [{}]", "invalid length 0, expected a map of one transform's name"),
            ("train: [RandomHorizontalFlip]", "expected a map of one transform's name to its parameters"),
            ("test: []", "unknown field: found `test`, expected ``train` or `eval``"),
        ];
        for (yaml, message) in cases {
            let e = parse(yaml).unwrap_err();
            assert!(e.contains(message), "{yaml}: {e}");
        }
    }
}
