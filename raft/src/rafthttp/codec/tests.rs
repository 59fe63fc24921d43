use super::*;

fn entry(term: u64, index: u64, data: &[u8]) -> Entry {
    Entry { term, index, data: data.to_vec().into(), ..Default::default() }
}

fn app(term: u64, log_term: u64, index: u64, entries: Vec<Entry>, commit: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgAppend);
    m.from = 2;
    m.to = 1;
    m.term = term;
    m.log_term = log_term;
    m.index = index;
    m.commit = commit;
    m.set_entries(entries.into());
    m
}

fn decode_all(d: &mut StreamDecoder, bytes: &[u8]) -> Vec<Message> {
    let mut buf = bytes.to_vec();
    let out = d.drain(&mut buf).expect("valid stream");
    assert!(buf.is_empty(), "bytes left over: {}", buf.len());
    out
}

#[test]
fn message_frame_is_length_then_protobuf() {
    let m = app(3, 3, 7, vec![entry(3, 8, b"x")], 7);
    let mut out = Vec::new();
    encode_message_frame(&m, &mut out);
    let body = m.write_to_bytes().unwrap();
    assert_eq!(&out[..8], &(body.len() as u64).to_be_bytes());
    assert_eq!(&out[8..], &body[..]);
    let (back, used) = MessageDecoder::default().decode(&out).unwrap().unwrap();
    assert_eq!((back, used), (m, out.len()));
}

#[test]
fn message_decoder_waits_for_a_whole_frame_at_every_split() {
    let mut bytes = Vec::new();
    encode_message_frame(&app(1, 1, 1, vec![entry(1, 2, b"abc")], 1), &mut bytes);
    encode_message_frame(&link_heartbeat(), &mut bytes);
    for split in 0..bytes.len() {
        let mut d = StreamDecoder::Message(MessageDecoder::default());
        let mut buf = bytes[..split].to_vec();
        let mut got = d.drain(&mut buf).unwrap();
        buf.extend_from_slice(&bytes[split..]);
        got.extend(d.drain(&mut buf).unwrap());
        assert_eq!(got.len(), 2, "split at {split}");
        assert!(is_link_heartbeat(&got[1]));
    }
}

#[test]
fn message_frame_longer_than_the_limit_is_refused_before_reading_it() {
    let mut bytes = u64::MAX.to_be_bytes().to_vec();
    bytes.extend_from_slice(&[0; 16]);
    assert_eq!(MessageDecoder::default().decode(&bytes), Err(CodecError::TooLarge));
    let mut bytes = 100u64.to_be_bytes().to_vec();
    bytes.extend_from_slice(&[0; 100]);
    assert_eq!(MessageDecoder::with_limit(99).decode(&bytes), Err(CodecError::TooLarge));
}

#[test]
fn etcd_gogoproto_zero_fields_and_empty_snapshot_decode() {
    // what gogoproto writes for Message{Type: MsgHeartbeat, To: 1, From: 2, Term: 5}: every
    // scalar (zeros included) and the non-nullable snapshot (empty metadata, conf state)
    let mut b = vec![0x08, 8, 0x10, 1, 0x18, 2, 0x20, 5, 0x28, 0, 0x30, 0, 0x40, 0];
    b.extend_from_slice(&[0x4a, 0x06, 0x12, 0x04, 0x0a, 0x00, 0x10, 0x00]); // snapshot{metadata{conf_state{}, index 0}}
    b.extend_from_slice(&[0x50, 0, 0x58, 0]); // reject false, rejectHint 0
    let m = decode_message(&b).unwrap();
    assert_eq!(m.get_msg_type(), MessageType::MsgHeartbeat);
    assert_eq!((m.to, m.from, m.term), (1, 2, 5));
    assert!(!is_link_heartbeat(&m));
}

#[test]
fn msgappv2_continuing_append_uses_the_short_form_and_round_trips() {
    let msgs = vec![
        app(2, 1, 5, vec![entry(2, 6, b"a"), entry(2, 7, b"b")], 5), // full: log term differs
        app(2, 2, 7, vec![entry(2, 8, b"c")], 7),                    // continues: short form
        app(2, 2, 8, vec![], 8),                                     // empty continuation
        link_heartbeat(),
        app(2, 2, 8, vec![entry(2, 9, b"d"), entry(2, 10, b"")], 9),
        app(2, 2, 4, vec![entry(2, 5, b"retry")], 9), // a rewind: full form again
        app(3, 3, 5, vec![entry(3, 6, b"e")], 9),     // new term: full form
    ];
    let mut enc = MsgAppV2Encoder::default();
    let mut bytes = Vec::new();
    let mut kinds = Vec::new();
    for m in &msgs {
        let before = bytes.len();
        enc.encode(m, &mut bytes);
        kinds.push(bytes[before]);
    }
    assert_eq!(kinds, vec![2, 1, 1, 0, 1, 2, 2]);
    let mut d = StreamDecoder::MsgAppV2(MsgAppV2Decoder::new(1, 2));
    let got = decode_all(&mut d, &bytes);
    assert_eq!(got, msgs);
}

#[test]
fn msgappv2_short_form_bytes_are_etcds() {
    let mut enc = MsgAppV2Encoder::default();
    let mut bytes = Vec::new();
    enc.encode(&app(1, 1, 0, vec![], 0), &mut bytes);
    let full = bytes.len();
    let e = entry(1, 1, b"z");
    enc.encode(&app(1, 1, 0, vec![e.clone()], 1), &mut bytes);
    let eb = e.write_to_bytes().unwrap();
    let mut want = vec![1];
    want.extend_from_slice(&1u64.to_be_bytes());
    want.extend_from_slice(&(eb.len() as u64).to_be_bytes());
    want.extend_from_slice(&eb);
    want.extend_from_slice(&1u64.to_be_bytes());
    assert_eq!(&bytes[full..], &want[..]);
}

#[test]
fn msgappv2_decoder_keeps_its_state_until_a_frame_is_whole() {
    let mut enc = MsgAppV2Encoder::default();
    let mut bytes = Vec::new();
    let msgs = vec![
        app(4, 4, 10, vec![entry(4, 11, b"q")], 10),
        app(4, 4, 11, vec![entry(4, 12, b"r")], 11),
        app(4, 4, 12, vec![entry(4, 13, b"s"), entry(4, 14, b"tt"), entry(4, 15, b"")], 12),
    ];
    let mut starts = Vec::new();
    for m in &msgs {
        starts.push(bytes.len());
        enc.encode(m, &mut bytes);
    }
    assert_eq!(bytes[starts[2]], MSGAPPV2_APP_ENTRIES, "several entries in the short form");
    for split in 0..bytes.len() {
        let mut d = StreamDecoder::MsgAppV2(MsgAppV2Decoder::new(1, 2));
        let mut buf = bytes[..split].to_vec();
        let mut got = d.drain(&mut buf).unwrap();
        buf.extend_from_slice(&bytes[split..]);
        got.extend(d.drain(&mut buf).unwrap());
        assert_eq!(got, msgs, "split at {split}");
    }
}

#[test]
fn msgappv2_rs_only_fields_force_the_full_form() {
    let mut enc = MsgAppV2Encoder::default();
    let mut bytes = Vec::new();
    enc.encode(&app(1, 1, 0, vec![], 0), &mut bytes);
    let mut m = app(1, 1, 0, vec![entry(1, 1, b"")], 1);
    m.commit_term = 1;
    let before = bytes.len();
    enc.encode(&m, &mut bytes);
    assert_eq!(bytes[before], 2);
}

#[test]
fn msgappv2_bad_input_is_an_error_not_a_panic() {
    let mut d = MsgAppV2Decoder::new(1, 2);
    assert_eq!(d.decode(&[9]), Err(CodecError::UnknownMsgAppV2Type(9)));
    // a count no limit allows
    let mut b = vec![1];
    b.extend_from_slice(&u64::MAX.to_be_bytes());
    assert_eq!(MsgAppV2Decoder::new(1, 2).decode(&b), Err(CodecError::TooLarge));
    // an entry size past the limit
    let mut b = vec![1];
    b.extend_from_slice(&1u64.to_be_bytes());
    b.extend_from_slice(&u64::MAX.to_be_bytes());
    assert_eq!(MsgAppV2Decoder::new(1, 2).decode(&b), Err(CodecError::TooLarge));
    // garbage entry bytes
    let mut b = vec![1];
    b.extend_from_slice(&1u64.to_be_bytes());
    b.extend_from_slice(&2u64.to_be_bytes());
    b.extend_from_slice(&[0xff, 0xff]);
    b.extend_from_slice(&0u64.to_be_bytes());
    assert!(matches!(MsgAppV2Decoder::new(1, 2).decode(&b), Err(CodecError::BadEntry(_))));
    // a full-form size past the limit
    let mut b = vec![2];
    b.extend_from_slice(&(MAX_MESSAGE_BYTES + 1).to_be_bytes());
    assert_eq!(MsgAppV2Decoder::new(1, 2).decode(&b), Err(CodecError::TooLarge));
}

#[test]
fn random_bytes_never_panic_either_decoder() {
    // a small xorshift: deterministic "fuzz" over short inputs biased to the frame headers
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..20000 {
        let len = (next() % 64) as usize;
        let mut b: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if len > 0 && next() % 2 == 0 {
            b[0] = (next() % 3) as u8;
        }
        if len > 9 && next() % 2 == 0 {
            let small = (next() % 40).to_be_bytes();
            b[1..9].copy_from_slice(&small);
        }
        let mut d = StreamDecoder::MsgAppV2(MsgAppV2Decoder::new(1, 2).with_limit(1 << 20));
        let _ = d.drain(&mut b.clone());
        let mut d = StreamDecoder::Message(MessageDecoder::with_limit(1 << 20));
        let _ = d.drain(&mut b);
    }
}
