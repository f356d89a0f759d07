//! The service SAS the hub signs for one blob and its blob endpoint verifies, shaped as Azure
//! Storage's ("Create a service SAS", version 2018-03-28, what IoT Hub hands out): `sv`, `sr=b`,
//! `sig`, `se`, `sp=rw`. The string to sign, for versions 2015-04-05 up to 2018-11-09, is
//! `sp\nst\nse\n/blob/{account}/{container}/{blob}\nsi\nsip\nspr\nsv\nrscc\nrscd\nrsce\nrscl\nrsct`,
//! signed with HMAC-SHA256 under the storage account key.
//!
//! The emulator's storage account key is derived from the hub's `iothubowner` key (HMAC with a
//! fixed label), so it is as stable as the hub's keys, survives restarts and is never stored or
//! shown anywhere.

use base64::Engine as _;
use ring::hmac;

/// The `sv` the hub signs with.
pub(crate) const VERSION: &str = "2018-03-28";

/// The storage account key.
pub(crate) struct StorageKey(hmac::Key);

impl std::fmt::Debug for StorageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StorageKey(<redacted>)")
    }
}

impl StorageKey {
    /// The key derived from the hub's owner key.
    pub(crate) fn derive(owner_key: &str) -> StorageKey {
        let k = hmac::Key::new(hmac::HMAC_SHA256, owner_key.as_bytes());
        let tag = hmac::sign(&k, b"azsim file upload storage account key v1");
        StorageKey(hmac::Key::new(hmac::HMAC_SHA256, tag.as_ref()))
    }
}

/// What a request does with the blob: the permission letter it needs in `sp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Read,
    Write,
}

/// Why a SAS is refused (each maps to Azure Storage's error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SasError {
    /// No `sig` at all: `NoAuthenticationInformation`.
    Missing,
    /// A field missing or malformed, the signature wrong, or not yet valid:
    /// `AuthenticationFailed` with this detail.
    Failed(String),
    /// Valid but `sp` lacks the letter the request needs: `AuthorizationPermissionMismatch`.
    Permission,
}

/// The signed fields of a SAS query, in string-to-sign order.
#[derive(Debug, Default)]
struct Fields {
    sp: String,
    st: String,
    se: String,
    si: String,
    sip: String,
    spr: String,
    sv: String,
    sr: String,
    sig: String,
    rscc: String,
    rscd: String,
    rsce: String,
    rscl: String,
    rsct: String,
}

impl Fields {
    fn parse(query: &str) -> Result<Fields, SasError> {
        let mut f = Fields::default();
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let mut value = String::new();
            azsim_proto::encoding::decode_to(&mut value, v)
                .map_err(|_| SasError::Failed(format!("'{k}' is not percent-encoded text")))?;
            let slot = match k {
                "sp" => &mut f.sp,
                "st" => &mut f.st,
                "se" => &mut f.se,
                "si" => &mut f.si,
                "sip" => &mut f.sip,
                "spr" => &mut f.spr,
                "sv" => &mut f.sv,
                "sr" => &mut f.sr,
                "sig" => &mut f.sig,
                "rscc" => &mut f.rscc,
                "rscd" => &mut f.rscd,
                "rsce" => &mut f.rsce,
                "rscl" => &mut f.rscl,
                "rsct" => &mut f.rsct,
                _ => continue,
            };
            *slot = value;
        }
        Ok(f)
    }

    fn string_to_sign(&self, resource: &str) -> String {
        [
            self.sp.as_str(),
            &self.st,
            &self.se,
            resource,
            &self.si,
            &self.sip,
            &self.spr,
            &self.sv,
            &self.rscc,
            &self.rscd,
            &self.rsce,
            &self.rscl,
            &self.rsct,
        ]
        .join("\n")
    }
}

/// `/blob/{account}/{container}/{blob}`: what a SAS for the blob signs.
fn canonical_resource(account: &str, container: &str, blob: &str) -> String {
    format!("/blob/{account}/{container}/{blob}")
}

/// `2021-07-30T06:11:10Z` for Unix seconds.
fn iso_seconds(unix_s: u64) -> String {
    crate::clock::rfc3339(unix_s)
}

fn parse_time(s: &str) -> Option<u64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp()).ok()
}

/// `?sv=..&sr=b&sig=..&se=..&sp=rw` for the blob, valid until `expiry_s` (Unix seconds).
pub(crate) fn sign(
    key: &StorageKey,
    account: &str,
    container: &str,
    blob: &str,
    expiry_s: u64,
) -> String {
    let fields = Fields {
        sp: "rw".into(),
        se: iso_seconds(expiry_s),
        sv: VERSION.into(),
        sr: "b".into(),
        ..Fields::default()
    };
    let resource = canonical_resource(account, container, blob);
    let tag = hmac::sign(&key.0, fields.string_to_sign(&resource).as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
    let enc = |s: &str| {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = azsim_proto::encoding::encode(&mut out, s);
        out
    };
    format!(
        "?sv={}&sr=b&sig={}&se={}&sp=rw",
        fields.sv,
        enc(&sig),
        enc(&fields.se)
    )
}

/// Check the SAS in `query` for `access` to the blob at `now_s`.
///
/// # Errors
/// [`SasError`]: what Azure Storage would answer.
pub(crate) fn verify(
    key: &StorageKey,
    account: &str,
    container: &str,
    blob: &str,
    query: &str,
    access: Access,
    now_s: u64,
) -> Result<(), SasError> {
    let f = Fields::parse(query)?;
    if f.sig.is_empty() {
        return Err(SasError::Missing);
    }
    if f.sv.is_empty() || f.se.is_empty() || f.sp.is_empty() {
        return Err(SasError::Failed(
            "sv, se and sp are mandatory. Specify all of them.".into(),
        ));
    }
    if f.sr != "b" {
        return Err(SasError::Failed(
            "Signed resource (sr) must be b (a blob) on this endpoint.".into(),
        ));
    }
    let sig = base64::engine::general_purpose::STANDARD
        .decode(f.sig.as_bytes())
        .map_err(|_| SasError::Failed("Signature (sig) is not base64.".into()))?;
    let resource = canonical_resource(account, container, blob);
    hmac::verify(&key.0, f.string_to_sign(&resource).as_bytes(), &sig)
        .map_err(|_| SasError::Failed("Signature did not match.".into()))?;
    let expiry = parse_time(&f.se)
        .ok_or_else(|| SasError::Failed("Signed expiry (se) is not an ISO 8601 time.".into()))?;
    if now_s >= expiry {
        return Err(SasError::Failed(format!(
            "Signed expiry time [{}] must be after the current time [{}]",
            f.se,
            iso_seconds(now_s)
        )));
    }
    if !f.st.is_empty() {
        let start = parse_time(&f.st)
            .ok_or_else(|| SasError::Failed("Signed start (st) is not an ISO 8601 time.".into()))?;
        if now_s < start {
            return Err(SasError::Failed(format!(
                "Signed start time [{}] is after the current time [{}]",
                f.st,
                iso_seconds(now_s)
            )));
        }
    }
    let letter = match access {
        Access::Read => 'r',
        Access::Write => 'w',
    };
    if !f.sp.contains(letter) {
        return Err(SasError::Permission);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> StorageKey {
        StorageKey::derive("b3duZXIta2V5")
    }

    #[test]
    fn a_signed_token_verifies_for_its_blob_until_it_expires() {
        let k = key();
        let sas = sign(&k, "acct", "ct", "dev/a b.txt", 1_000);
        assert!(sas.starts_with("?sv=2018-03-28&sr=b&sig="), "{sas}");
        assert!(sas.ends_with("&se=1970-01-01T00%3A16%3A40Z&sp=rw"), "{sas}");
        let q = &sas[1..];
        assert_eq!(
            verify(&k, "acct", "ct", "dev/a b.txt", q, Access::Write, 999),
            Ok(())
        );
        assert_eq!(
            verify(&k, "acct", "ct", "dev/a b.txt", q, Access::Read, 999),
            Ok(())
        );
        assert!(matches!(
            verify(&k, "acct", "ct", "dev/a b.txt", q, Access::Read, 1_000),
            Err(SasError::Failed(m)) if m.contains("expiry")
        ));
        // Another blob, container or key: the signature does not match.
        for (c, b, k2) in [
            ("ct", "dev/other", key()),
            ("ct2", "dev/a b.txt", key()),
            ("ct", "dev/a b.txt", StorageKey::derive("b3RoZXI=")),
        ] {
            assert!(matches!(
                verify(&k2, "acct", c, b, q, Access::Read, 10),
                Err(SasError::Failed(m)) if m == "Signature did not match."
            ));
        }
    }

    #[test]
    fn tampered_fields_and_missing_ones_are_refused() {
        let k = key();
        let q = sign(&k, "a", "c", "b", 1_000)[1..].to_string();
        let read_only = q.replace("sp=rw", "sp=r");
        assert!(matches!(
            verify(&k, "a", "c", "b", &read_only, Access::Read, 1),
            Err(SasError::Failed(_))
        ));
        let later = q.replace("1970-01-01T00%3A16%3A40Z", "2099-01-01T00%3A00%3A00Z");
        assert!(matches!(
            verify(&k, "a", "c", "b", &later, Access::Read, 1),
            Err(SasError::Failed(_))
        ));
        assert_eq!(
            verify(&k, "a", "c", "b", "sv=2018-03-28", Access::Read, 1),
            Err(SasError::Missing)
        );
        assert!(matches!(
            verify(
                &k,
                "a",
                "c",
                "b",
                &q.replace("sr=b", "sr=c"),
                Access::Read,
                1
            ),
            Err(SasError::Failed(_))
        ));
    }

    #[test]
    fn the_permission_letter_is_checked_after_the_signature() {
        let k = key();
        let fields = Fields {
            sp: "r".into(),
            se: iso_seconds(100),
            sv: VERSION.into(),
            sr: "b".into(),
            ..Fields::default()
        };
        let tag = hmac::sign(
            &k.0,
            fields
                .string_to_sign(&canonical_resource("a", "c", "b"))
                .as_bytes(),
        );
        let mut sig = String::new();
        azsim_proto::encoding::encode(
            &mut sig,
            &base64::engine::general_purpose::STANDARD.encode(tag.as_ref()),
        )
        .unwrap();
        let q = format!(
            "sv={VERSION}&sr=b&sig={sig}&se={}&sp=r",
            iso_seconds(100).replace(':', "%3A")
        );
        assert_eq!(verify(&k, "a", "c", "b", &q, Access::Read, 1), Ok(()));
        assert_eq!(
            verify(&k, "a", "c", "b", &q, Access::Write, 1),
            Err(SasError::Permission)
        );
    }
}
