use super::*;

/// Tiny big-endian buffer builder for hand-made messages.
#[derive(Default)]
struct B(Vec<u8>);

impl B {
    fn new(tag: u8) -> Self {
        B(vec![tag])
    }
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn i16(mut self, v: i16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i32(mut self, v: i32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i64(mut self, v: i64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn s(mut self, v: &str) -> Self {
        self.0.extend_from_slice(v.as_bytes());
        self.0.push(0);
        self
    }
    fn raw(mut self, v: &[u8]) -> Self {
        self.0.extend_from_slice(v);
        self
    }
    fn text(self, v: &str) -> Self {
        self.u8(b't').i32(v.len() as i32).raw(v.as_bytes())
    }
}

/// Every strict prefix of a valid message must fail without panicking.
fn assert_prefixes_fail(buf: &[u8]) {
    for i in 0..buf.len() {
        assert!(decode(&buf[..i]).is_err(), "prefix of len {i} decoded");
    }
    let mut longer = buf.to_vec();
    longer.push(0);
    assert!(matches!(
        decode(&longer),
        Err(DecodeError::TrailingBytes { .. })
    ));
}

#[test]
fn begin_and_commit() {
    let b = B::new(b'B').i64(0x1_0000_0010).i64(42).i32(777).0;
    assert_eq!(
        decode(&b).unwrap(),
        Message::Begin(Begin {
            final_lsn: Lsn(0x1_0000_0010),
            commit_time: PgTimestamp(42),
            xid: 777
        })
    );
    assert_prefixes_fail(&b);
    let c = B::new(b'C').u8(0).i64(5).i64(6).i64(7).0;
    assert_eq!(
        decode(&c).unwrap(),
        Message::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(5),
            end_lsn: Lsn(6),
            commit_time: PgTimestamp(7)
        })
    );
    assert_prefixes_fail(&c);
}

#[test]
fn origin() {
    let b = B::new(b'O').i64(9).s("node_a").0;
    assert_eq!(
        decode(&b).unwrap(),
        Message::Origin(Origin {
            commit_lsn: Lsn(9),
            name: "node_a".into()
        })
    );
    assert_prefixes_fail(&b);
}

fn relation_buf() -> Vec<u8> {
    B::new(b'R')
        .i32(16384)
        .s("public")
        .s("items")
        .u8(b'f')
        .i16(2)
        .u8(1)
        .s("id")
        .i32(23)
        .i32(-1)
        .u8(0)
        .s("name")
        .i32(1043)
        .i32(36)
        .0
}

#[test]
fn relation() {
    let b = relation_buf();
    let Message::Relation(r) = decode(&b).unwrap() else {
        panic!("not a relation")
    };
    assert_eq!(r.oid, 16384);
    assert_eq!(r.namespace, "public");
    assert_eq!(r.name, "items");
    assert_eq!(r.replica_identity, ReplicaIdentity::Full);
    assert_eq!(r.xid, None);
    assert_eq!(r.columns.len(), 2);
    assert!(r.columns[0].is_key());
    assert!(!r.columns[1].is_key());
    assert_eq!(r.columns[1].type_oid, 1043);
    assert_eq!(r.columns[1].type_modifier, 36);
    assert_prefixes_fail(&b);

    let mut bad = b.clone();
    let pos = 1 + 4 + "public\0items\0".len();
    bad[pos] = b'x';
    assert!(matches!(
        decode(&bad),
        Err(DecodeError::Invalid {
            field: "replica identity",
            ..
        })
    ));
}

#[test]
fn relation_negative_and_huge_column_count() {
    let b = B::new(b'R').i32(1).s("").s("t").u8(b'd').i16(-1).0;
    assert!(matches!(
        decode(&b),
        Err(DecodeError::Invalid {
            field: "column count",
            ..
        })
    ));
    let b = B::new(b'R').i32(1).s("").s("t").u8(b'd').i16(i16::MAX).0;
    assert!(matches!(decode(&b), Err(DecodeError::Truncated { .. })));
}

#[test]
fn type_message() {
    let b = B::new(b'Y').i32(90000).s("public").s("mood").0;
    assert_eq!(
        decode(&b).unwrap(),
        Message::Type(TypeInfo {
            xid: None,
            oid: 90000,
            namespace: "public".into(),
            name: "mood".into()
        })
    );
    assert_prefixes_fail(&b);
}

#[test]
fn insert_all_column_kinds() {
    let b = B::new(b'I')
        .i32(16384)
        .u8(b'N')
        .i16(4)
        .text("héllo")
        .u8(b'n')
        .u8(b'u')
        .u8(b'b')
        .i32(2)
        .raw(&[0xde, 0xad])
        .0;
    assert_eq!(
        decode(&b).unwrap(),
        Message::Insert(Insert {
            xid: None,
            relation_oid: 16384,
            new: vec![
                ColumnValue::Text(Bytes::from("héllo")),
                ColumnValue::Null,
                ColumnValue::UnchangedToast,
                ColumnValue::Binary(Bytes::from_static(&[0xde, 0xad])),
            ]
        })
    );
    assert_prefixes_fail(&b);
}

#[test]
fn insert_errors() {
    let wrong_marker = B::new(b'I').i32(1).u8(b'K').i16(0).0;
    assert!(matches!(
        decode(&wrong_marker),
        Err(DecodeError::Invalid {
            field: "new tuple marker",
            ..
        })
    ));
    let bad_kind = B::new(b'I').i32(1).u8(b'N').i16(1).u8(b'x').0;
    assert!(matches!(
        decode(&bad_kind),
        Err(DecodeError::Invalid {
            field: "tuple column kind",
            ..
        })
    ));
    let neg_len = B::new(b'I').i32(1).u8(b'N').i16(1).u8(b't').i32(-5).0;
    assert!(matches!(decode(&neg_len), Err(DecodeError::Invalid { .. })));
    let huge_len = B::new(b'I').i32(1).u8(b'N').i16(1).u8(b't').i32(i32::MAX).0;
    assert!(matches!(
        decode(&huge_len),
        Err(DecodeError::Truncated { .. })
    ));
    // Text that is not UTF-8 (SQL_ASCII bytes, a truncated multibyte character
    // written by a C function) is carried as the bytes the server sent.
    let not_utf8 = B::new(b'I')
        .i32(1)
        .u8(b'N')
        .i16(2)
        .u8(b't')
        .i32(2)
        .raw(&[0xe3, 0x81])
        .u8(b't')
        .i32(1)
        .raw(&[0xff])
        .0;
    match decode(&not_utf8).unwrap() {
        Message::Insert(i) => assert_eq!(
            i.new,
            vec![
                ColumnValue::Text(Bytes::from_static(&[0xe3, 0x81])),
                ColumnValue::Text(Bytes::from_static(&[0xff]))
            ]
        ),
        other => panic!("{other:?}"),
    }
    let neg_cols = B::new(b'I').i32(1).u8(b'N').i16(-3).0;
    assert!(matches!(
        decode(&neg_cols),
        Err(DecodeError::Invalid { .. })
    ));
}

#[test]
fn update_variants() {
    let plain = B::new(b'U').i32(7).u8(b'N').i16(1).text("1").0;
    assert_eq!(
        decode(&plain).unwrap(),
        Message::Update(Update {
            xid: None,
            relation_oid: 7,
            old: None,
            new: vec![ColumnValue::Text(Bytes::from_static("1".as_bytes()))]
        })
    );
    assert_prefixes_fail(&plain);

    let with_key = B::new(b'U')
        .i32(7)
        .u8(b'K')
        .i16(2)
        .text("1")
        .u8(b'n')
        .u8(b'N')
        .i16(2)
        .text("2")
        .text("x")
        .0;
    let Message::Update(u) = decode(&with_key).unwrap() else {
        panic!("not an update")
    };
    assert_eq!(
        u.old,
        Some(OldTuple::Key(vec![
            ColumnValue::Text(Bytes::from_static("1".as_bytes())),
            ColumnValue::Null
        ]))
    );
    assert_eq!(
        u.new[1],
        ColumnValue::Text(Bytes::from_static("x".as_bytes()))
    );
    assert_prefixes_fail(&with_key);

    let with_old = B::new(b'U')
        .i32(7)
        .u8(b'O')
        .i16(1)
        .text("a")
        .u8(b'N')
        .i16(1)
        .text("b")
        .0;
    let Message::Update(u) = decode(&with_old).unwrap() else {
        panic!("not an update")
    };
    assert_eq!(
        u.old,
        Some(OldTuple::Full(vec![ColumnValue::Text(Bytes::from_static(
            "a".as_bytes()
        ))]))
    );
    assert_eq!(u.old.as_ref().map(|o| o.values().len()), Some(1));
    assert_prefixes_fail(&with_old);

    let missing_new = B::new(b'U').i32(7).u8(b'O').i16(0).u8(b'O').i16(0).0;
    assert!(decode(&missing_new).is_err());
}

#[test]
fn delete_variants() {
    let k = B::new(b'D').i32(3).u8(b'K').i16(1).text("9").0;
    assert_eq!(
        decode(&k).unwrap(),
        Message::Delete(Delete {
            xid: None,
            relation_oid: 3,
            old: OldTuple::Key(vec![ColumnValue::Text(Bytes::from_static("9".as_bytes()))])
        })
    );
    assert_prefixes_fail(&k);
    let o = B::new(b'D').i32(3).u8(b'O').i16(0).0;
    assert!(matches!(
        decode(&o).unwrap(),
        Message::Delete(Delete {
            old: OldTuple::Full(_),
            ..
        })
    ));
    let n = B::new(b'D').i32(3).u8(b'N').i16(0).0;
    assert!(matches!(
        decode(&n),
        Err(DecodeError::Invalid {
            field: "old tuple marker",
            ..
        })
    ));
}

#[test]
fn truncate() {
    let b = B::new(b'T').i32(2).u8(3).i32(10).i32(11).0;
    let Message::Truncate(t) = decode(&b).unwrap() else {
        panic!("not a truncate")
    };
    assert_eq!(t.relation_oids, vec![10, 11]);
    assert!(t.cascade() && t.restart_identity());
    assert_prefixes_fail(&b);
    let neg = B::new(b'T').i32(-1).u8(0).0;
    assert!(decode(&neg).is_err());
    let huge = B::new(b'T').i32(i32::MAX).u8(0).0;
    assert!(matches!(decode(&huge), Err(DecodeError::Truncated { .. })));
}

#[test]
fn logical_message() {
    let b = B::new(b'M')
        .u8(1)
        .i64(0x20)
        .s("tidemark.ddl")
        .i32(9)
        .raw(b"ALTER ...")
        .0;
    let Message::LogicalMessage(m) = decode(&b).unwrap() else {
        panic!("not a message")
    };
    assert!(m.transactional());
    assert_eq!(m.lsn, Lsn(0x20));
    assert_eq!(m.prefix, "tidemark.ddl");
    assert_eq!(&m.content[..], b"ALTER ...");
    assert_prefixes_fail(&b);
}

#[test]
fn unknown_and_empty() {
    assert_eq!(decode(&[]), Err(DecodeError::Empty));
    assert_eq!(decode(b"Z"), Err(DecodeError::UnknownMessageType(b'Z')));
    let e = decode(&B::new(b'B').i64(1).0).unwrap_err();
    assert!(e.to_string().contains("Begin"), "{e}");
    assert!(e.to_string().contains("commit timestamp"), "{e}");
}

#[test]
fn streamed_transactions() {
    let mut d = Decoder::new(2);
    assert_eq!(
        d.decode(&B::new(b'S').i32(500).u8(1).0).unwrap(),
        Message::StreamStart {
            xid: 500,
            first_segment: true
        }
    );
    assert!(d.in_stream());
    let ins = B::new(b'I').i32(500).i32(16384).u8(b'N').i16(1).text("v").0;
    assert!(matches!(
        d.decode(&ins).unwrap(),
        Message::Insert(Insert {
            xid: Some(500),
            relation_oid: 16384,
            ..
        })
    ));
    assert_eq!(d.decode(b"E").unwrap(), Message::StreamStop);
    assert!(!d.in_stream());
    let c = B::new(b'c').i32(500).u8(0).i64(1).i64(2).i64(3).0;
    assert!(matches!(
        d.decode(&c).unwrap(),
        Message::StreamCommit(StreamCommit { xid: 500, .. })
    ));
    let a = B::new(b'A').i32(500).i32(501).0;
    assert_eq!(
        d.decode(&a).unwrap(),
        Message::StreamAbort(StreamAbort {
            xid: 500,
            subxid: 501,
            abort: None
        })
    );
    let mut d4 = Decoder::new(4);
    let a4 = B::new(b'A').i32(1).i32(2).i64(3).i64(4).0;
    assert!(matches!(
        d4.decode(&a4).unwrap(),
        Message::StreamAbort(StreamAbort {
            abort: Some((Lsn(3), PgTimestamp(4))),
            ..
        })
    ));
    // Version 1 decoding of a version-4 abort reports the extra bytes.
    assert!(decode(&a4).is_err());
}

#[test]
fn arbitrary_bytes_never_panic() {
    // Deterministic pseudo-random fuzzing over every message type.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let tags = b"BCORYIUDTMSEcAx";
    for i in 0..20_000 {
        let mut buf = vec![tags[i % tags.len()]];
        let len = (i * 7) % 64;
        for _ in 0..len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            buf.push((state & 0xff) as u8);
        }
        let _ = decode(&buf);
        let _ = Decoder::new(4).decode(&buf);
    }
}
