//! The GGUF header, read from the mapped bytes with every count and length checked against the bytes that
//! are left before anything is allocated for it.
//!
//! gguf-rs (kept as the independent reader the tests compare this one with) cannot be trusted with a
//! stranger's file: it allocates a string's claimed length before reading it (up to 1 GiB each), turns
//! every array element into a JSON value with no bound, overwrites duplicate keys silently, replaces an
//! invalid `general.alignment` with the default, and panics on tensor type 40. Each of those is a bug class
//! of the GGUF loaders (the CVEs in issue 20), so the header is parsed here instead.

use std::collections::BTreeMap;

use serde_json::Value;

/// Most elements of one metadata array: the largest vocabularies have about 262,000 tokens, and each
/// element becomes a value in memory (tens of bytes), so a hostile count must not decide how much is used.
pub const MAX_ARRAY_LEN: u64 = 1 << 21;

/// Longest metadata string: chat templates are kilobytes, a whole embedded `tokenizer.json` a few MiB.
pub const MAX_STRING_LEN: u64 = 64 << 20;

/// Longest tensor name, as llama.cpp's `GGML_MAX_NAME` (64 bytes with the terminating zero).
pub const MAX_NAME_LEN: u64 = 63;

/// Most dimensions of a tensor (`GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;

/// Alignment of the tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// A tensor's record in the header, before it is checked against the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawTensor {
    pub name: String,
    /// Dimensions, ne0 first.
    pub shape: Vec<u64>,
    /// The ggml type id.
    pub kind: u32,
    /// Offset of its data from the start of the data section.
    pub offset: u64,
}

/// A parsed header.
#[derive(Debug)]
pub struct Header {
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<RawTensor>,
    pub alignment: u64,
    /// Where the data section starts in the file: the end of the header rounded up to `alignment`.
    pub data_offset: u64,
}

/// Sequential reads from the header bytes; every read checks that the bytes are there.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

type Parse<T> = Result<T, String>;

impl<'a> Reader<'a> {
    fn left(&self) -> u64 {
        (self.b.len() - self.at) as u64
    }

    fn take(&mut self, n: u64, what: &str) -> Parse<&'a [u8]> {
        if n > self.left() {
            return Err(format!(
                "{what} at byte {} needs {n} bytes but the file has {} left (truncated or corrupt)",
                self.at,
                self.left()
            ));
        }
        let s = &self.b[self.at..self.at + n as usize];
        self.at += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Parse<[u8; N]> {
        Ok(self.take(N as u64, what)?.try_into().expect("N bytes"))
    }

    fn u32(&mut self, what: &str) -> Parse<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Parse<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A length-prefixed string's bytes.
    fn bytes(&mut self, what: &str) -> Parse<&'a [u8]> {
        let len = self.u64(what)?;
        self.take(len, what)
    }

    /// A string that must be valid UTF-8 (keys and tensor names).
    fn name(&mut self, what: &str) -> Parse<String> {
        let at = self.at;
        let b = self.bytes(what)?;
        String::from_utf8(b.to_vec()).map_err(|_| format!("{what} at byte {at} is not valid UTF-8"))
    }
}

/// The metadata value types of GGUF, by id.
const TYPE_NAMES: [&str; 13] =
    ["u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"];
const STRING: u32 = 8;
const ARRAY: u32 = 9;
const U32: u32 = 4;
const I32: u32 = 5;

/// The type a key Quire reads must have, and its arrays' element type, as llama.cpp's loader requires them
/// (it refuses any other): a `token_type` array of bytes, say, is a file that lies about its layout.
fn expected_type(key: &str) -> Option<(u32, Option<u32>)> {
    let string = Some((STRING, None));
    match key {
        "general.architecture"
        | "tokenizer.ggml.model"
        | "tokenizer.ggml.pre"
        | "tokenizer.chat_template" => string,
        "tokenizer.ggml.tokens" | "tokenizer.ggml.merges" => Some((ARRAY, Some(STRING))),
        "tokenizer.ggml.token_type" => Some((ARRAY, Some(I32))),
        "tokenizer.ggml.bos_token_id" | "tokenizer.ggml.eos_token_id" | "tokenizer.ggml.padding_token_id" => {
            Some((U32, None))
        }
        _ => {
            let (arch, rest) = key.split_once('.')?;
            let hparam = [
                "block_count",
                "context_length",
                "embedding_length",
                "feed_forward_length",
                "attention.head_count",
                "attention.head_count_kv",
                "attention.key_length",
                "attention.value_length",
            ];
            (arch != "general" && arch != "tokenizer" && hparam.contains(&rest)).then_some((U32, None))
        }
    }
}

fn type_name(ty: u32, item: Option<u32>) -> String {
    match item {
        Some(i) => format!("array of {}", TYPE_NAMES[i as usize]),
        None => TYPE_NAMES[ty as usize].to_string(),
    }
}

/// Bytes of a value of scalar type `ty` (a string's minimum: its length).
fn min_size(ty: u32) -> u64 {
    match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        _ => 8,
    }
}

fn value_type(r: &mut Reader, key: &str) -> Parse<u32> {
    let at = r.at;
    let ty = r.u32("a value type")?;
    if ty as usize >= TYPE_NAMES.len() {
        return Err(format!("key '{key}': unknown value type {ty} at byte {at} (GGUF has 0 to 12)"));
    }
    Ok(ty)
}

/// One scalar or string value of type `ty` (not an array).
fn scalar(r: &mut Reader, ty: u32, key: &str) -> Parse<Value> {
    let what = format!("the value of '{key}'");
    Ok(match ty {
        0 => Value::from(r.array::<1>(&what)?[0]),
        1 => Value::from(r.array::<1>(&what)?[0] as i8),
        2 => Value::from(u16::from_le_bytes(r.array(&what)?)),
        3 => Value::from(i16::from_le_bytes(r.array(&what)?)),
        4 => Value::from(r.u32(&what)?),
        5 => Value::from(i32::from_le_bytes(r.array(&what)?)),
        6 => Value::from(f32::from_le_bytes(r.array(&what)?)),
        7 => match r.array::<1>(&what)?[0] {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            b => return Err(format!("key '{key}': a boolean is {b}, not 0 or 1")),
        },
        STRING => {
            let len = r.u64(&what)?;
            if len > MAX_STRING_LEN {
                return Err(format!(
                    "key '{key}': a string of {len} bytes, more than the {} MiB allowed",
                    MAX_STRING_LEN >> 20
                ));
            }
            Value::from(String::from_utf8_lossy(r.take(len, &what)?).into_owned())
        }
        10 => Value::from(r.u64(&what)?),
        11 => Value::from(i64::from_le_bytes(r.array(&what)?)),
        12 => Value::from(f64::from_le_bytes(r.array(&what)?)),
        _ => unreachable!("callers pass scalar types"),
    })
}

/// A value of type `ty`, and its elements' type when it is an array.
fn value(r: &mut Reader, ty: u32, key: &str) -> Parse<(Value, Option<u32>)> {
    if ty != ARRAY {
        return Ok((scalar(r, ty, key)?, None));
    }
    let item = value_type(r, key)?;
    if item == ARRAY {
        return Err(format!("key '{key}': arrays of arrays are not supported (nor used by any model file)"));
    }
    let n = r.u64(&format!("the length of '{key}'"))?;
    if n > MAX_ARRAY_LEN {
        return Err(format!("key '{key}': an array of {n} elements, more than the {MAX_ARRAY_LEN} allowed"));
    }
    // the elements must fit in what is left: a count cannot make us reserve memory the file does not back
    if n.saturating_mul(min_size(item)) > r.left() {
        return Err(format!(
            "key '{key}': {n} elements of type {} cannot fit in the {} bytes left (truncated or corrupt)",
            TYPE_NAMES[item as usize],
            r.left()
        ));
    }
    let mut items = Vec::with_capacity(n as usize);
    for _ in 0..n {
        items.push(scalar(r, item, key)?);
    }
    Ok((Value::Array(items), Some(item)))
}

/// Parses the header of a GGUF file (`b`: the whole file). The magic and version are checked by the caller.
pub fn parse(b: &[u8]) -> Parse<Header> {
    let mut r = Reader { b, at: 0 };
    r.take(4, "the magic")?;
    r.take(4, "the version")?;
    let n_tensors = r.u64("the tensor count")?;
    let n_kv = r.u64("the key/value count")?;
    // a pair takes at least 8 + 1 + 4 + 1 bytes, a tensor record 8 + 1 + 4 + 8 + 4 + 8
    if n_kv > r.left() / 14 {
        return Err(format!("{n_kv} key/value pairs cannot fit in a file of {} bytes", b.len()));
    }
    if n_tensors > r.left() / 33 {
        return Err(format!("{n_tensors} tensors cannot fit in a file of {} bytes", b.len()));
    }
    let mut metadata = BTreeMap::new();
    let mut alignment = DEFAULT_ALIGNMENT;
    for _ in 0..n_kv {
        let at = r.at;
        let key = r.name("a key")?;
        if key.is_empty() {
            return Err(format!("an empty key at byte {at}"));
        }
        let ty = value_type(&mut r, &key)?;
        let (v, item) = value(&mut r, ty, &key)?;
        if let Some((want, want_item)) = expected_type(&key).filter(|&e| e != (ty, item)) {
            return Err(format!(
                "key '{key}' is {}, expected {}",
                type_name(ty, item),
                type_name(want, want_item)
            ));
        }
        if key == "general.alignment" {
            let a = v.as_u64().filter(|a| ty == U32 && a.is_power_of_two()).ok_or_else(|| {
                format!("general.alignment must be a u32 power of two, not {v} ({})", TYPE_NAMES[ty as usize])
            })?;
            alignment = a;
        }
        if metadata.insert(key.clone(), v).is_some() {
            return Err(format!("key '{key}' appears twice"));
        }
    }
    let mut tensors = Vec::with_capacity(n_tensors as usize);
    for _ in 0..n_tensors {
        let at = r.at;
        let name = r.name("a tensor name")?;
        if name.is_empty() || name.len() as u64 > MAX_NAME_LEN {
            return Err(format!("tensor name at byte {at} is {} bytes (1 to {MAX_NAME_LEN})", name.len()));
        }
        let n_dims = r.u32("a dimension count")?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(format!("tensor '{name}' has {n_dims} dimensions (1 to {MAX_DIMS})"));
        }
        let mut shape = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            shape.push(r.u64("a dimension")?);
        }
        let kind = r.u32("a tensor type")?;
        let offset = r.u64("a tensor offset")?;
        tensors.push(RawTensor { name, shape, kind, offset });
    }
    let end = r.at as u64;
    let data_offset = end
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| format!("the data section offset overflows with alignment {alignment}"))?;
    Ok(Header { metadata, tensors, alignment, data_offset })
}
