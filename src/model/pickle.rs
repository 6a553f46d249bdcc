//! A walker over the pickles of a TorchScript archive (`data.pkl`, `constants.pkl`) that
//! reads only the storages their persistent ids declare: no object is built, every read is
//! bounds-checked, and the stack is capped.
//!
//! A pickle is a program for a stack machine; reading which storages it declares needs only
//! the part of that machine which builds the persistent ids (tuples of strings, a class and
//! an integer: `('storage', torch.FloatStorage, '0', 'cpu', 24)`), the memo those may come
//! from, and the marks. Everything else is pushed as an opaque value. Nothing is executed
//! and no class is resolved. Opcodes that libtorch's unpickler does not accept either
//! (`INST`, `OBJ`, the extension registry, out-of-band buffers) are refused.
//!
//! Past our ~450-line habit only by its tests (the walker is one state machine).

use std::collections::HashMap;
use std::rc::Rc;

/// The most values the walker keeps on its stack (marks included): far above what
/// TorchScript writes (its nesting follows the module tree), far below what would cost
/// memory.
const MAX_STACK: usize = 1 << 20;

/// A pickle the walker cannot read: nested too deep, or a fault at a byte.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PickleError {
    /// More values on the stack than the walker keeps.
    #[error("nests deeper than {MAX_STACK} values")]
    TooDeep,
    /// What is wrong at byte `at` (the opcode's offset).
    #[error("at byte {at}: {fault}")]
    At {
        /// The opcode's offset in the pickle.
        at: usize,
        /// What is wrong there.
        fault: PickleFault,
    },
}

/// What is wrong at one opcode of a pickle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PickleFault {
    /// A read runs past the end.
    #[error("{0} bytes past the end of the pickle")]
    PastEnd(u64),
    /// The pickle ends before its STOP opcode.
    #[error("the pickle ends without STOP")]
    NoStop,
    /// A text argument has no newline.
    #[error("a line without its end")]
    UnendedLine,
    /// An opcode pops more values than there are (above the last mark).
    #[error("an opcode takes more values than the stack holds")]
    StackUnderflow,
    /// A pop-to-mark without a mark.
    #[error("no MARK to pop to")]
    NoMark,
    /// A `SHORT_BINSTRING`-style length below zero.
    #[error("a negative length")]
    NegativeLength,
    /// A text `PUT` whose argument is not a number.
    #[error("a PUT without a number")]
    PutWithoutNumber,
    /// A text `GET` whose argument is not a number.
    #[error("a GET without a number")]
    GetWithoutNumber,
    /// A memo store with nothing to store.
    #[error("a memo store on an empty stack")]
    MemoOnEmptyStack,
    /// A memo read of an entry never written.
    #[error("memo entry {0} read before written")]
    MemoUnwritten(u64),
    /// `DUP` with nothing to duplicate.
    #[error("DUP on an empty stack")]
    DupOnEmptyStack,
    /// An opcode TorchScript's pickler never writes.
    #[error("opcode 0x{0:02x}, which TorchScript does not write")]
    UnknownOpcode(u8),
    /// A persistent id of a storage that is not `('storage', class, key, location, numel)`.
    #[error("{0}")]
    StorageId(#[from] StorageIdError),
}

/// A storage's persistent id that does not declare a storage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageIdError {
    /// Not five items.
    #[error("a storage id of {0} items, not 5")]
    Items(usize),
    /// Five items of the wrong kinds.
    #[error("a storage id that is not (str, class, str, str, int)")]
    Kinds,
    /// A storage class of no known element size.
    #[error("storage `{key}` has unknown type {class}")]
    UnknownClass {
        /// The storage's key.
        key: String,
        /// The class (`torch FloatStorage`).
        class: String,
    },
    /// A negative element count.
    #[error("storage `{key}` declares {numel} elements")]
    NegativeCount {
        /// The storage's key.
        key: String,
        /// The count.
        numel: i64,
    },
    /// Elements times their size overflows.
    #[error("storage `{key}` size overflows")]
    Overflow {
        /// The storage's key.
        key: String,
    },
}

/// A storage a pickle declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storage {
    /// The record's name under the archive's `data/` (or `constants/`).
    pub(super) key: String,
    /// Elements declared.
    pub(super) numel: u64,
    /// Bytes per element of its storage class.
    pub(super) element_size: u64,
    /// `numel * element_size`.
    pub(super) bytes: u64,
}

/// A value on the walker's stack: what a persistent id is made of, or something opaque.
#[derive(Debug)]
enum Value {
    Str(String),
    Int(i64),
    /// `module name` of a `GLOBAL`.
    Global(String),
    Tuple(Vec<Rc<Value>>),
    Mark,
    Other,
}

/// Reads a pickle and returns the storages its persistent ids declare.
pub(super) fn declared_storages(pickle: &[u8]) -> Result<Vec<Storage>, PickleError> {
    let mut r = Cursor { bytes: pickle, at: 0 };
    let mut stack: Vec<Rc<Value>> = Vec::new();
    let mut memo: HashMap<u64, Rc<Value>> = HashMap::new();
    let mut out = Vec::new();
    let other = || Rc::new(Value::Other);
    loop {
        if stack.len() > MAX_STACK {
            return Err(PickleError::TooDeep);
        }
        let at = r.at;
        let op = r.byte()?;
        match op {
            b'.' => return Ok(out),
            0x80 => drop(r.take(1)?), // PROTO
            0x95 => drop(r.take(8)?), // FRAME
            b'(' => stack.push(Rc::new(Value::Mark)),
            b')' => stack.push(Rc::new(Value::Tuple(Vec::new()))),
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let items = pop_n(&mut stack, n, at)?;
                stack.push(Rc::new(Value::Tuple(items)));
            }
            b't' => {
                let items = pop_mark(&mut stack, at)?;
                stack.push(Rc::new(Value::Tuple(items)));
            }
            b']' | b'}' | 0x8f | b'N' | 0x88 | 0x89 => stack.push(other()),
            b'l' | b'd' | 0x91 => {
                pop_mark(&mut stack, at)?;
                stack.push(other());
            }
            b'a' => drop(pop_n(&mut stack, 1, at)?),
            b's' => drop(pop_n(&mut stack, 2, at)?),
            b'e' | b'u' | 0x90 => drop(pop_mark(&mut stack, at)?),
            b'K' => stack.push(Rc::new(Value::Int(i64::from(r.take(1)?[0])))),
            b'M' => stack.push(Rc::new(Value::Int(i64::from(u16::from_le_bytes(r.array()?))))),
            b'J' => stack.push(Rc::new(Value::Int(i64::from(i32::from_le_bytes(r.array()?))))),
            0x8a | 0x8b => {
                let n = if op == 0x8a { u64::from(r.take(1)?[0]) } else { u64::from(u32::from_le_bytes(r.array()?)) };
                let bytes = r.take(n)?;
                stack.push(Rc::new(long(bytes).map_or(Value::Other, Value::Int)));
            }
            b'I' | b'L' => {
                let line = r.line()?;
                let text = line.trim_end_matches('L');
                stack.push(Rc::new(text.parse().map_or(Value::Other, Value::Int)));
            }
            b'G' => stack.push(r.take(8).map(|_| Value::Other).map(Rc::new)?),
            b'F' => stack.push(r.line().map(|_| Value::Other).map(Rc::new)?),
            b'X' | 0x8c | 0x8d | b'U' | b'T' => {
                let n = match op {
                    b'X' => u64::from(u32::from_le_bytes(r.array()?)),
                    0x8c | b'U' => u64::from(r.take(1)?[0]),
                    b'T' => u64::try_from(i32::from_le_bytes(r.array()?))
                        .map_err(|_| at_op(at, PickleFault::NegativeLength))?,
                    _ => u64::from_le_bytes(r.array()?),
                };
                let text = String::from_utf8_lossy(r.take(n)?).into_owned();
                stack.push(Rc::new(Value::Str(text)));
            }
            b'V' | b'S' => {
                let line = r.line()?;
                stack.push(Rc::new(Value::Str(line.trim_matches(['\'', '"']).to_string())));
            }
            b'C' | b'B' | 0x8e | 0x96 => {
                let n = match op {
                    b'C' => u64::from(r.take(1)?[0]),
                    b'B' => u64::from(u32::from_le_bytes(r.array()?)),
                    _ => u64::from_le_bytes(r.array()?),
                };
                r.take(n)?;
                stack.push(other());
            }
            b'c' => {
                let module = r.line()?;
                let name = r.line()?;
                stack.push(Rc::new(Value::Global(format!("{module} {name}"))));
            }
            0x93 => {
                let items = pop_n(&mut stack, 2, at)?;
                let global = match (&*items[0], &*items[1]) {
                    (Value::Str(module), Value::Str(name)) => Value::Global(format!("{module} {name}")),
                    _ => Value::Other,
                };
                stack.push(Rc::new(global));
            }
            b'R' | 0x81 => {
                pop_n(&mut stack, 2, at)?;
                stack.push(other());
            }
            0x92 => {
                pop_n(&mut stack, 3, at)?;
                stack.push(other());
            }
            b'b' => drop(pop_n(&mut stack, 1, at)?),
            b'Q' => {
                let pid = pop_n(&mut stack, 1, at)?.remove(0);
                if let Some(storage) = storage_of(&pid).map_err(|e| at_op(at, e.into()))? {
                    out.push(storage);
                }
                stack.push(other());
            }
            b'q' | b'r' | b'p' | 0x94 => {
                let key = match op {
                    b'q' => u64::from(r.take(1)?[0]),
                    b'r' => u64::from(u32::from_le_bytes(r.array()?)),
                    b'p' => r.line()?.parse().map_err(|_| at_op(at, PickleFault::PutWithoutNumber))?,
                    _ => memo.len() as u64,
                };
                let top = stack.last().ok_or_else(|| at_op(at, PickleFault::MemoOnEmptyStack))?;
                memo.insert(key, Rc::clone(top));
            }
            b'h' | b'j' | b'g' => {
                let key = match op {
                    b'h' => u64::from(r.take(1)?[0]),
                    b'j' => u64::from(u32::from_le_bytes(r.array()?)),
                    _ => r.line()?.parse().map_err(|_| at_op(at, PickleFault::GetWithoutNumber))?,
                };
                let value = memo.get(&key).ok_or_else(|| at_op(at, PickleFault::MemoUnwritten(key)))?;
                stack.push(Rc::clone(value));
            }
            b'0' => drop(pop_n(&mut stack, 1, at)?),
            b'1' => drop(pop_mark(&mut stack, at)?),
            b'2' => {
                let top = stack.last().ok_or_else(|| at_op(at, PickleFault::DupOnEmptyStack))?;
                stack.push(Rc::clone(top));
            }
            b'P' => {
                r.line()?;
                stack.push(other());
            }
            other_op => return Err(at_op(at, PickleFault::UnknownOpcode(other_op))),
        }
    }
}

/// The storage a persistent id declares: `('storage', <dtype>Storage, key, location, numel)`;
/// `None` for a persistent id of another kind.
fn storage_of(pid: &Value) -> Result<Option<Storage>, StorageIdError> {
    let Value::Tuple(items) = pid else { return Ok(None) };
    if !matches!(items.first().map(|v| &**v), Some(Value::Str(s)) if s == "storage") {
        return Ok(None);
    }
    let [_, kind, key, _location, numel] = &items[..] else {
        return Err(StorageIdError::Items(items.len()));
    };
    let (Value::Global(kind), Value::Str(key), Value::Int(numel)) = (&**kind, &**key, &**numel) else {
        return Err(StorageIdError::Kinds);
    };
    let element_size =
        element_size(kind).ok_or_else(|| StorageIdError::UnknownClass { key: key.clone(), class: kind.clone() })?;
    let numel = u64::try_from(*numel).map_err(|_| StorageIdError::NegativeCount { key: key.clone(), numel: *numel })?;
    let bytes = numel.checked_mul(element_size).ok_or_else(|| StorageIdError::Overflow { key: key.clone() })?;
    Ok(Some(Storage { key: key.clone(), numel, element_size, bytes }))
}

/// Bytes per element of a storage class (`torch FloatStorage`).
fn element_size(global: &str) -> Option<u64> {
    let name = global.strip_prefix("torch ")?.strip_suffix("Storage")?;
    Some(match name {
        "Bool" | "Byte" | "Char" | "QUInt8" | "QInt8" | "QUInt4x2" | "QUInt2x4" | "UInt8" | "Int8" => 1,
        n if n.starts_with("Float8") => 1,
        "Half" | "BFloat16" | "Short" | "UInt16" => 2,
        "ComplexHalf" | "Float" | "Int" | "QInt32" | "UInt32" => 4,
        "Double" | "Long" | "ComplexFloat" | "UInt64" => 8,
        "ComplexDouble" => 16,
        "Untyped" => 1,
        _ => return None,
    })
}

/// A little-endian two's-complement integer of `LONG1`/`LONG4`, if it fits an `i64`.
fn long(bytes: &[u8]) -> Option<i64> {
    if bytes.is_empty() {
        return Some(0);
    }
    if bytes.len() > 8 {
        return None;
    }
    let negative = bytes[bytes.len() - 1] & 0x80 != 0;
    let mut buf = [if negative { 0xff } else { 0 }; 8];
    buf[..bytes.len()].copy_from_slice(bytes);
    Some(i64::from_le_bytes(buf))
}

fn at_op(at: usize, fault: PickleFault) -> PickleError {
    PickleError::At { at, fault }
}

fn pop_n(stack: &mut Vec<Rc<Value>>, n: usize, at: usize) -> Result<Vec<Rc<Value>>, PickleError> {
    if stack.len() < n || stack[stack.len() - n..].iter().any(|v| matches!(**v, Value::Mark)) {
        return Err(at_op(at, PickleFault::StackUnderflow));
    }
    Ok(stack.split_off(stack.len() - n))
}

fn pop_mark(stack: &mut Vec<Rc<Value>>, at: usize) -> Result<Vec<Rc<Value>>, PickleError> {
    let mark = stack.iter().rposition(|v| matches!(**v, Value::Mark)).ok_or_else(|| at_op(at, PickleFault::NoMark))?;
    let items = stack.split_off(mark + 1);
    stack.pop();
    Ok(items)
}

/// A read position in a pickle; every read is bounds-checked.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64) -> Result<&'a [u8], PickleError> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.at.checked_add(n))
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| at_op(self.at, PickleFault::PastEnd(n)))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn byte(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1).map_err(|_| at_op(self.at, PickleFault::NoStop))?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        Ok(self.take(N as u64)?.try_into().expect("took N bytes"))
    }

    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.bytes[self.at..];
        let end = rest.iter().position(|&b| b == b'\n').ok_or_else(|| at_op(self.at, PickleFault::UnendedLine))?;
        let line = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.at += end + 1;
        Ok(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(('storage', torch FloatStorage, '0', 'cpu', 24) BINPERSID` with the strings
    /// memoised and read back once, as torch's pickler writes them.
    fn pickle_declaring(numel: u8) -> Vec<u8> {
        let mut p = vec![0x80, 2, b'(', b'X'];
        p.extend_from_slice(&7u32.to_le_bytes());
        p.extend_from_slice(b"storage");
        p.extend_from_slice(&[b'q', 0]);
        p.extend_from_slice(b"ctorch\nFloatStorage\n");
        for s in ["0", "cpu"] {
            p.push(0x8c);
            p.push(s.len() as u8);
            p.extend_from_slice(s.as_bytes());
        }
        p.extend_from_slice(&[b'K', numel, b't', b'Q', b'0']);
        // A second id, its strings from the memo.
        p.extend_from_slice(&[b'(', b'h', 0, b'c']);
        p.extend_from_slice(b"torch\nLongStorage\n");
        p.extend_from_slice(&[0x8c, 1, b'1', 0x8c, 3, b'c', b'p', b'u', b'M', 0, 1, b't', b'Q', b'.']);
        p
    }

    #[test]
    fn persistent_ids_give_each_storage_its_declared_bytes() {
        let storages = declared_storages(&pickle_declaring(24)).unwrap();
        assert_eq!(
            storages,
            [
                Storage { key: "0".into(), numel: 24, element_size: 4, bytes: 96 },
                Storage { key: "1".into(), numel: 256, element_size: 8, bytes: 2048 },
            ]
        );
    }

    #[test]
    fn every_truncation_of_a_pickle_is_an_error_not_a_panic() {
        let p = pickle_declaring(24);
        for n in 0..p.len() {
            assert!(declared_storages(&p[..n]).is_err(), "cut at {n}");
        }
    }

    #[test]
    fn every_single_byte_change_is_read_without_a_panic() {
        let p = pickle_declaring(24);
        for i in 0..p.len() {
            for b in [0u8, 0x7f, 0x80, 0xff, b'(', b't', b'Q', b'h'] {
                let mut q = p.clone();
                q[i] = b;
                let _ = declared_storages(&q);
            }
        }
    }

    #[test]
    fn element_sizes_follow_the_storage_classes() {
        for (class, size) in [
            ("torch FloatStorage", 4),
            ("torch BFloat16Storage", 2),
            ("torch HalfStorage", 2),
            ("torch LongStorage", 8),
            ("torch BoolStorage", 1),
            ("torch ComplexDoubleStorage", 16),
            ("torch ComplexHalfStorage", 4),
            ("torch Float8_e4m3fnStorage", 1),
        ] {
            assert_eq!(element_size(class), Some(size), "{class}");
        }
        assert_eq!(element_size("torch NoSuchStorage"), None);
        assert_eq!(element_size("os system"), None);
    }

    #[test]
    fn longs_are_twos_complement() {
        assert_eq!(long(&[]), Some(0));
        assert_eq!(long(&[0xff]), Some(-1));
        assert_eq!(long(&[0x00, 0x01]), Some(256));
        assert_eq!(long(&[0; 9]), None);
    }
}
