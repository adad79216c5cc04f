//! Field encoding: the primitives every typed request and response is built from.
//!
//! Big-endian integers; `bool` is one byte (0 or 1); a string is a `u16` byte length and UTF-8;
//! bytes are a `u32` length and the bytes; a list is a `u32` count and its elements; a pair is
//! its two parts. Decoding checks every length against what is left before it allocates, so a
//! hostile count or length costs an error, never a large allocation or a panic.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Why a frame's fields (or body) did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("fields end early: {what} needs {need} more bytes, {left} left")]
    Truncated {
        what: &'static str,
        need: usize,
        left: usize,
    },
    #[error("{what} is not valid UTF-8")]
    BadUtf8 { what: &'static str },
    #[error("{what} is {value}, which is not allowed")]
    BadValue { what: &'static str, value: u64 },
    #[error("{extra} bytes left over after the last field")]
    TrailingBytes { extra: usize },
    #[error(
        "a list claims {count} elements; {left} bytes are left and at most {LIST_MAX} are allowed in all"
    )]
    ListTooLong { count: u32, left: usize },
}

/// A cursor over received fields.
#[derive(Debug, Clone)]
pub struct Reader {
    buf: Bytes,
    /// List elements the rest of this decode may still hold, across all (nested) lists.
    elements_left: u32,
}

impl Reader {
    pub fn new(buf: Bytes) -> Self {
        Reader {
            buf,
            elements_left: LIST_MAX,
        }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn need(&self, n: usize, what: &'static str) -> Result<(), FieldError> {
        if self.buf.len() < n {
            return Err(FieldError::Truncated {
                what,
                need: n,
                left: self.buf.len(),
            });
        }
        Ok(())
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, FieldError> {
        self.need(1, what)?;
        Ok(self.buf.get_u8())
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, FieldError> {
        self.need(2, what)?;
        Ok(self.buf.get_u16())
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, FieldError> {
        self.need(4, what)?;
        Ok(self.buf.get_u32())
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64, FieldError> {
        self.need(8, what)?;
        Ok(self.buf.get_u64())
    }

    pub fn i64(&mut self, what: &'static str) -> Result<i64, FieldError> {
        self.need(8, what)?;
        Ok(self.buf.get_i64())
    }

    /// `n` bytes, shared with the frame (no copy).
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<Bytes, FieldError> {
        self.need(n, what)?;
        Ok(self.buf.split_to(n))
    }

    /// Fails unless every byte was read.
    pub fn finish(self) -> Result<(), FieldError> {
        match self.buf.len() {
            0 => Ok(()),
            extra => Err(FieldError::TrailingBytes { extra }),
        }
    }
}

/// List elements one decode (a frame's fields) may hold in all, nested lists included.
pub const LIST_MAX: u32 = 65_536;

/// A value with a field encoding.
pub trait Wire: Sized {
    /// The fewest bytes any value encodes to (at least 1): bounds a list's claimed count.
    const MIN_LEN: usize;
    fn put(&self, w: &mut BytesMut);
    fn get(r: &mut Reader, what: &'static str) -> Result<Self, FieldError>;
}

macro_rules! wire_int {
    ($t:ty, $put:ident, $get:ident, $n:literal) => {
        impl Wire for $t {
            const MIN_LEN: usize = $n;
            fn put(&self, w: &mut BytesMut) {
                w.$put(*self);
            }
            fn get(r: &mut Reader, what: &'static str) -> Result<Self, FieldError> {
                r.$get(what)
            }
        }
    };
}

wire_int!(u8, put_u8, u8, 1);
wire_int!(u16, put_u16, u16, 2);
wire_int!(u32, put_u32, u32, 4);
wire_int!(u64, put_u64, u64, 8);
wire_int!(i64, put_i64, i64, 8);

impl Wire for bool {
    const MIN_LEN: usize = 1;
    fn put(&self, w: &mut BytesMut) {
        w.put_u8(u8::from(*self));
    }
    fn get(r: &mut Reader, what: &'static str) -> Result<Self, FieldError> {
        match r.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(FieldError::BadValue {
                what,
                value: v as u64,
            }),
        }
    }
}

/// Writes `s` as a `String` field (u16 length, UTF-8 bytes), cut at a character boundary
/// past `u16::MAX` bytes, without owning it.
pub fn put_str(w: &mut BytesMut, s: &str) {
    let mut end = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    w.put_u16(end as u16);
    w.put_slice(&s.as_bytes()[..end]);
}

impl Wire for String {
    const MIN_LEN: usize = 2;
    /// Strings longer than `u16::MAX` bytes are cut at a character boundary: callers check
    /// lengths (topic names, keys, properties) well below that before encoding.
    fn put(&self, w: &mut BytesMut) {
        put_str(w, self);
    }
    fn get(r: &mut Reader, what: &'static str) -> Result<Self, FieldError> {
        let n = r.u16(what)? as usize;
        let bytes = r.take(n, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| FieldError::BadUtf8 { what })
    }
}

impl Wire for Bytes {
    const MIN_LEN: usize = 4;
    fn put(&self, w: &mut BytesMut) {
        debug_assert!(self.len() <= u32::MAX as usize);
        w.put_u32(self.len() as u32);
        w.put_slice(self);
    }
    fn get(r: &mut Reader, what: &'static str) -> Result<Self, FieldError> {
        let n = r.u32(what)? as usize;
        r.take(n, what)
    }
}

impl<T: Wire> Wire for Vec<T> {
    const MIN_LEN: usize = 4;
    fn put(&self, w: &mut BytesMut) {
        debug_assert!(
            self.len() <= LIST_MAX as usize,
            "a list the peer would refuse"
        );
        w.put_u32(self.len() as u32);
        for v in self {
            v.put(w);
        }
    }
    fn get(r: &mut Reader, what: &'static str) -> Result<Self, FieldError> {
        let count = r.u32(what)?;
        // Each element takes at least MIN_LEN bytes: a count the bytes left cannot hold is a
        // lie, refused before anything is reserved for it. The element cap bounds what a
        // frame of many tiny elements decodes to in memory.
        // The element budget is shared by every list of one decode, nested ones included, so
        // lists of lists cannot multiply it.
        if count > r.elements_left
            || (count as usize).saturating_mul(T::MIN_LEN.max(1)) > r.remaining()
        {
            return Err(FieldError::ListTooLong {
                count,
                left: r.remaining(),
            });
        }
        r.elements_left -= count;
        let mut out = Vec::with_capacity(count as usize);
        for _ in 0..count {
            out.push(T::get(r, what)?);
        }
        Ok(out)
    }
}

impl<A: Wire, B: Wire> Wire for (A, B) {
    const MIN_LEN: usize = A::MIN_LEN + B::MIN_LEN;
    fn put(&self, w: &mut BytesMut) {
        self.0.put(w);
        self.1.put(w);
    }
    fn get(r: &mut Reader, what: &'static str) -> Result<Self, FieldError> {
        Ok((A::get(r, what)?, B::get(r, what)?))
    }
}

/// Values made up from a seed, for the round-trip property tests.
#[cfg(test)]
pub(crate) mod gen {
    use bytes::Bytes;

    pub struct Rng(pub u64);

    impl Rng {
        pub fn next(&mut self) -> u64 {
            // xorshift64*
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        pub fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    pub trait Gen {
        fn gen(rng: &mut Rng) -> Self;
    }

    macro_rules! gen_int {
        ($($t:ty),*) => {$(
            impl Gen for $t {
                fn gen(rng: &mut Rng) -> Self {
                    rng.next() as $t
                }
            }
        )*};
    }
    gen_int!(u8, u16, u32, u64, i64);

    impl Gen for bool {
        fn gen(rng: &mut Rng) -> Self {
            rng.next() & 1 == 1
        }
    }

    impl Gen for String {
        fn gen(rng: &mut Rng) -> Self {
            const CHARS: &[char] = &['a', 'Z', '0', '%', ' ', '|', 'é', '消', '🦀'];
            (0..rng.below(12))
                .map(|_| CHARS[rng.below(CHARS.len() as u64) as usize])
                .collect()
        }
    }

    impl Gen for Bytes {
        fn gen(rng: &mut Rng) -> Self {
            (0..rng.below(40)).map(|_| rng.next() as u8).collect()
        }
    }

    impl<T: Gen> Gen for Vec<T> {
        fn gen(rng: &mut Rng) -> Self {
            (0..rng.below(4)).map(|_| T::gen(rng)).collect()
        }
    }

    impl<A: Gen, B: Gen> Gen for (A, B) {
        fn gen(rng: &mut Rng) -> Self {
            (A::gen(rng), B::gen(rng))
        }
    }
}

/// Defines a struct whose fields encode in declaration order, with `Wire` for it.
macro_rules! wire_struct {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $f:ident: $t:ty,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Default)]
        pub struct $name {
            $($(#[$fm])* pub $f: $t,)*
        }

        impl $crate::wire::Wire for $name {
            const MIN_LEN: usize = 1 $(+ <$t as $crate::wire::Wire>::MIN_LEN)* - 1;
            #[allow(unused_variables)]
            fn put(&self, w: &mut bytes::BytesMut) {
                $($crate::wire::Wire::put(&self.$f, w);)*
            }
            #[allow(unused_variables)]
            fn get(
                r: &mut $crate::wire::Reader,
                what: &'static str,
            ) -> Result<Self, $crate::wire::FieldError> {
                Ok($name {
                    $($f: <$t as $crate::wire::Wire>::get(r, stringify!($f))?,)*
                })
            }
        }

        #[cfg(test)]
        impl $crate::wire::gen::Gen for $name {
            #[allow(unused_variables)]
            fn gen(rng: &mut $crate::wire::gen::Rng) -> Self {
                $name {
                    $($f: <$t as $crate::wire::gen::Gen>::gen(rng),)*
                }
            }
        }
    };
}
pub(crate) use wire_struct;

/// Encodes `v` alone (a frame's fields).
pub fn to_bytes<T: Wire>(v: &T) -> Bytes {
    let mut w = BytesMut::new();
    v.put(&mut w);
    w.freeze()
}

/// Decodes `buf` as exactly one `T`.
pub fn from_bytes<T: Wire>(buf: Bytes, what: &'static str) -> Result<T, FieldError> {
    let mut r = Reader::new(buf);
    let v = T::get(&mut r, what)?;
    r.finish()?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lying_list_count_is_refused_before_allocating() {
        let mut w = BytesMut::new();
        w.put_u32(u32::MAX);
        w.put_u64(7);
        let err = from_bytes::<Vec<u64>>(w.freeze(), "list").unwrap_err();
        assert!(matches!(
            err,
            FieldError::ListTooLong {
                count: u32::MAX,
                ..
            }
        ));
    }

    #[test]
    fn nested_lists_share_one_element_budget() {
        let inner: Vec<u8> = vec![1; 300];
        let outer: Vec<Vec<u8>> = vec![inner; 250]; // 75 000 elements in all
        let err = from_bytes::<Vec<Vec<u8>>>(to_bytes(&outer), "nested").unwrap_err();
        assert!(matches!(err, FieldError::ListTooLong { .. }), "{err}");
        let fits: Vec<Vec<u8>> = vec![vec![1; 300]; 200]; // 60 200
        assert_eq!(
            from_bytes::<Vec<Vec<u8>>>(to_bytes(&fits), "n").unwrap(),
            fits
        );
    }

    #[test]
    fn strings_bools_and_trailing_bytes() {
        let v = (String::from("héllo"), true);
        assert_eq!(from_bytes::<(String, bool)>(to_bytes(&v), "v").unwrap(), v);
        let mut w = BytesMut::new();
        w.put_u16(2);
        w.put_slice(&[0xff, 0xfe]);
        assert_eq!(
            from_bytes::<String>(w.freeze(), "s"),
            Err(FieldError::BadUtf8 { what: "s" })
        );
        let err = from_bytes::<bool>(Bytes::from_static(&[2]), "b").unwrap_err();
        assert_eq!(
            err,
            FieldError::BadValue {
                what: "b",
                value: 2
            }
        );
        let err = from_bytes::<u8>(Bytes::from_static(&[1, 2]), "u").unwrap_err();
        assert_eq!(err, FieldError::TrailingBytes { extra: 1 });
    }

    #[test]
    fn an_overlong_string_is_cut_at_a_char_boundary() {
        let s = "é".repeat(40_000); // 80 000 bytes
        let back = from_bytes::<String>(to_bytes(&s), "s").unwrap();
        assert!(back.len() <= u16::MAX as usize);
        assert!(s.starts_with(&back));
    }
}
