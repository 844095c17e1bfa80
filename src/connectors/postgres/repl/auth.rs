//! The authentication exchange of the startup phase.

use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;

use crate::connectors::postgres::repl::error::Error;
use crate::connectors::postgres::repl::wire::{parse_error_fields, BodyReader, Framed};

/// Runs the authentication exchange after the startup message was sent,
/// until `AuthenticationOk`. Supports trust, cleartext password, MD5 and
/// SCRAM-SHA-256 (without channel binding). The password is only ever
/// written to the socket, never into an error.
pub(crate) async fn authenticate(
    framed: &mut Framed,
    user: &str,
    password: Option<&str>,
) -> Result<(), Error> {
    let mut scram: Option<ScramSha256> = None;
    loop {
        let msg = framed.read_message().await?;
        match msg.tag {
            b'E' => return Err(Error::from_server(parse_error_fields(&msg.body), user)),
            b'N' => continue,
            b'R' => {}
            other => {
                return Err(Error::Protocol(format!(
                    "expected authentication request, got message '{}'",
                    other as char
                )))
            }
        }
        let mut r = BodyReader::new(&msg.body, "authentication");
        let code = r.i32()?;
        let need_pw = || {
            password.ok_or_else(|| Error::PasswordRequired {
                user: user.to_string(),
            })
        };
        match code {
            0 => return Ok(()),
            3 => {
                let pw = need_pw()?;
                frontend::password_message(pw.as_bytes(), &mut framed.write_buf)?;
            }
            5 => {
                let pw = need_pw()?;
                let s = r.bytes(4)?;
                let salt = [s[0], s[1], s[2], s[3]];
                let hash = md5_hash(user.as_bytes(), pw.as_bytes(), salt);
                frontend::password_message(hash.as_bytes(), &mut framed.write_buf)?;
            }
            10 => {
                let pw = need_pw()?;
                let mut offered = Vec::new();
                loop {
                    let m = r.cstr()?;
                    if m.is_empty() {
                        break;
                    }
                    offered.push(m);
                }
                if !offered.iter().any(|m| m == SCRAM_SHA_256) {
                    return Err(Error::UnsupportedAuth {
                        method: format!("SASL ({})", offered.join(", ")),
                    });
                }
                let s = ScramSha256::new(pw.as_bytes(), ChannelBinding::unsupported());
                frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut framed.write_buf)?;
                scram = Some(s);
            }
            11 => {
                let s = scram
                    .as_mut()
                    .ok_or_else(|| Error::Protocol("SASL continue without SASL start".into()))?;
                s.update(r.rest())
                    .map_err(|e| Error::Protocol(format!("SCRAM exchange failed: {e}")))?;
                frontend::sasl_response(s.message(), &mut framed.write_buf)?;
            }
            12 => {
                let s = scram
                    .as_mut()
                    .ok_or_else(|| Error::Protocol("SASL final without SASL start".into()))?;
                s.finish(r.rest()).map_err(|e| {
                    Error::Protocol(format!("SCRAM server signature verification failed: {e}"))
                })?;
                continue;
            }
            2 => {
                return Err(Error::UnsupportedAuth {
                    method: "Kerberos V5".into(),
                })
            }
            6 => {
                return Err(Error::UnsupportedAuth {
                    method: "SCM credentials".into(),
                })
            }
            7 | 8 => {
                return Err(Error::UnsupportedAuth {
                    method: "GSSAPI".into(),
                })
            }
            9 => {
                return Err(Error::UnsupportedAuth {
                    method: "SSPI".into(),
                })
            }
            other => {
                return Err(Error::UnsupportedAuth {
                    method: format!("code {other}"),
                })
            }
        }
        framed.flush().await?;
    }
}
