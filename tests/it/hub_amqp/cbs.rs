//! Authentication: CBS `put-token` answers, SASL PLAIN with a token, links that need a token.

use azsim_emulator::clock::unix_now;
use fe2o3_amqp::Session;
use fe2o3_amqp::sasl_profile::SaslProfile;

use super::{Cbs, authorized, open, owner_token, refusal};
use crate::support::TestHub;

#[tokio::test]
async fn put_token_answers_200_for_an_owner_token_and_401_for_a_bad_or_expired_one() {
    let hub = TestHub::start().await;
    let mut conn = open(&hub, SaslProfile::Anonymous).await.expect("open");
    let mut session = Session::begin(&mut conn).await.expect("session");
    let mut cbs = Cbs::attach(&mut session).await;
    let aud = format!("sb://localhost:{}/localhost", hub.info.amqp_port.unwrap());

    let good = owner_token(&hub, &aud, unix_now() + 600);
    assert_eq!(cbs.put_token(&aud, &good).await.0, 200);

    let expired = owner_token(&hub, &aud, unix_now() - 10);
    let (status, desc) = cbs.put_token(&aud, &expired).await;
    assert_eq!(status, 401, "{desc}");
    assert!(desc.contains("expired"), "{desc}");

    let mut forged = owner_token(&hub, &aud, unix_now() + 600);
    let at = forged.find("sig=").unwrap() + 4;
    forged.replace_range(at..at + 4, "AAAA");
    let (status, desc) = cbs.put_token(&aud, &forged).await;
    assert_eq!(status, 401, "{desc}");
    assert!(
        !desc.contains(&forged[at..at + 20]),
        "no signature in {desc}"
    );

    let other_hub = owner_token(&hub, "sb://elsewhere/localhost", unix_now() + 600);
    let (status, _) = cbs.put_token("sb://elsewhere/localhost", &other_hub).await;
    assert_eq!(status, 401, "a token for another host");

    let (status, _) = cbs.put_token(&aud, "not a token").await;
    assert_eq!(status, 401);
    // The connection still works after the refusals.
    assert_eq!(cbs.put_token(&aud, &good).await.0, 200);
    conn.close().await.expect("clean close");
    hub.stop().await;
}

#[tokio::test]
async fn sasl_plain_takes_a_policy_token_and_refuses_a_bad_one() {
    let hub = TestHub::start().await;
    let token = owner_token(&hub, &hub.hostname, unix_now() + 600);
    let plain = |password: String| SaslProfile::Plain {
        username: "iothubowner@sas.root.localhost".into(),
        password,
    };
    let mut conn = open(&hub, plain(token.clone()))
        .await
        .expect("PLAIN with a token");
    conn.close().await.expect("close");

    let bad = owner_token(&hub, &hub.hostname, unix_now() - 5);
    let e = open(&hub, plain(bad))
        .await
        .expect_err("expired token refused");
    assert!(format!("{e:?}").contains("Auth"), "{e:?}");
    let e = open(
        &hub,
        SaslProfile::Plain {
            username: "someone@sas.root.otherhub".into(),
            password: token,
        },
    )
    .await
    .expect_err("another hub's name refused");
    assert!(format!("{e:?}").contains("Auth"), "{e:?}");
    hub.stop().await;
}

#[tokio::test]
async fn links_to_unknown_nodes_are_refused_with_not_found() {
    let hub = TestHub::start().await;
    let (mut conn, mut session, _cbs) = authorized(&hub).await;
    let c = refusal(&mut session, "nowhere", "no/such/node").await;
    assert!(
        c.as_deref().is_some_and(|c| c.contains("NotFound")),
        "{c:?}"
    );
    let c = refusal(&mut session, "elsewhere", "amqps://otherhost/localhost").await;
    assert!(
        c.as_deref().is_some_and(|c| c.contains("NotFound")),
        "{c:?}"
    );
    // The session and connection are still usable.
    let mut cbs2 = Cbs::attach(&mut session).await;
    let token = owner_token(&hub, &hub.hostname, unix_now() + 600);
    assert_eq!(cbs2.put_token(&hub.hostname, &token).await.0, 200);
    conn.close().await.expect("close");
    hub.stop().await;
}
