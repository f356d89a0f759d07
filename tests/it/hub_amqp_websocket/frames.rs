//! AMQP frames and WebSocket messages are independent: a frame may span messages and a message
//! may hold several frames (hand-encoded frames, the hub answers each).

use super::*;

/// An AMQP frame (channel 0) around `body`.
fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = u32::try_from(8 + body.len())
        .unwrap()
        .to_be_bytes()
        .to_vec();
    f.extend_from_slice(&[2, 0, 0, 0]);
    f.extend_from_slice(body);
    f
}

/// The hub's byte stream until it holds the protocol header and `frames` frames: the
/// performative code of each (the byte after the descriptor's `0x00 0x53`).
async fn header_and_frames(ws: &mut Ws, frames: usize) -> ([u8; 8], Vec<u8>) {
    let mut bytes = Vec::new();
    let mut codes = Vec::new();
    tokio::time::timeout(WAIT, async {
        loop {
            let mut at = 8;
            codes.clear();
            while let Some(head) = bytes.get(at..at + 4) {
                let size = u32::from_be_bytes(head.try_into().unwrap()) as usize;
                let Some(f) = bytes.get(at..at + size) else {
                    break;
                };
                assert_eq!(&f[8..10], [0x00, 0x53], "a described performative");
                codes.push(f[10]);
                at += size;
            }
            if bytes.len() >= 8 && codes.len() >= frames {
                return;
            }
            match ws.next().await {
                Some(Ok(WsMessage::Binary(b))) => bytes.extend_from_slice(&b),
                other => panic!("the hub's bytes: {other:?}"),
            }
        }
    })
    .await
    .expect("the hub answers in time");
    (bytes[..8].try_into().unwrap(), codes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_frames_may_span_websocket_messages_and_a_message_may_hold_several() {
    let hub = TestHub::start().await;
    const HEADER: &[u8] = b"AMQP\x00\x01\x00\x00";
    // open (container-id "c") and begin (next-outgoing-id 0, windows 100), hand-encoded.
    let open = frame(&[0x00, 0x53, 0x10, 0xc0, 0x04, 0x01, 0xa1, 0x01, b'c']);
    let begin = frame(&[
        0x00, 0x53, 0x11, 0xc0, 0x07, 0x04, 0x40, 0x43, 0x52, 0x64, 0x52, 0x64,
    ]);

    // Everything in one message: header, open and begin.
    let mut ws = websocket(&hub, SERVICEBUS_PATH, "AMQPWSB10").await.unwrap();
    let all = [HEADER, &open, &begin].concat();
    ws.send(WsMessage::binary(all)).await.unwrap();
    let (header, codes) = header_and_frames(&mut ws, 2).await;
    assert_eq!(&header, HEADER);
    assert_eq!(codes[..2], [0x10, 0x11], "open, then begin");

    // The header and the open split over five messages.
    let mut split = websocket(&hub, IOTHUB_PATH, "AMQPWSB10").await.unwrap();
    let stream = [HEADER, &open].concat();
    for piece in [
        &stream[..3],
        &stream[3..8],
        &stream[8..10],
        &stream[10..15],
        &stream[15..],
    ] {
        split.send(WsMessage::binary(piece.to_vec())).await.unwrap();
    }
    let (header, codes) = header_and_frames(&mut split, 1).await;
    assert_eq!(&header, HEADER);
    assert_eq!(codes[0], 0x10, "open");
    // Gone without answering: the hub's stop does not wait for their AMQP close.
    drop((ws, split));
    hub.stop().await;
}
