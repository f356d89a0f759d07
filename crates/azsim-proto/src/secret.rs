//! [`Secret`]: a value that must never be printed (a key, a token, a connection string).
//!
//! The house rule is that a secret never reaches a log, an error message or a `{:?}`. Wrapping it
//! makes that the type's job instead of every struct's hand-written `Debug`: `Debug` shows
//! `<redacted>`, there is no `Display`, and reading the value takes an explicit
//! [`Secret::expose`], so every use of a secret is visible in the code that makes it.
//!
//! What this type does not do: zero the memory on drop, or compare in constant time (compare
//! signatures with a MAC's own `verify`, never with `==` on a `Secret`).

use core::fmt;

/// A value whose `Debug` prints `<redacted>`; read it with [`Secret::expose`].
///
/// No heap and no `Display`. `Clone`, `Copy`, `PartialEq`, `Eq` and `Default` follow `T`.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps `value`.
    #[inline]
    pub const fn new(value: T) -> Self {
        Self(value)
    }

    /// The secret value itself. Named so that every place a secret is read stands out.
    #[inline]
    pub const fn expose(&self) -> &T {
        &self.0
    }

    /// Unwraps the secret value.
    #[inline]
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> From<T> for Secret<T> {
    #[inline]
    fn from(value: T) -> Self {
        Self(value)
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;

    #[test]
    fn debug_never_shows_the_value_even_nested_or_pretty() {
        let s = Secret::new("c2VjcmV0");
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(format!("{s:#?}"), "<redacted>");
        assert_eq!(format!("{:?}", Some(s)), "Some(<redacted>)");
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Holder {
            key: Secret<[u8; 4]>,
        }
        let shown = format!(
            "{:?}",
            Holder {
                key: Secret::from(*b"abcd")
            }
        );
        assert_eq!(shown, "Holder { key: <redacted> }");
    }

    #[test]
    fn expose_and_into_inner_give_the_value_back() {
        let s: Secret<u32> = 7.into();
        assert_eq!(*s.expose(), 7);
        let copy = s;
        assert_eq!(copy, s);
        assert_ne!(Secret::new(8), s);
        assert_eq!(s.into_inner(), 7);
    }
}
