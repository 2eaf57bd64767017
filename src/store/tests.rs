//! Behaviour every [`ResponseStore`] must have, run against each backend.

use std::time::Duration;

use bytes::Bytes;

use super::*;

pub(crate) fn record(model: &str) -> StoredResponse {
    let id = new_response_id();
    StoredResponse::with_id(
        id.clone(),
        Bytes::from(format!(
            r#"{{"id":"{id}","object":"response","output":[]}}"#
        )),
        Bytes::from_static(br#"[{"role":"user","content":[{"type":"input_text","text":"hi"}]}]"#),
        model,
        "mock/echo",
    )
}

/// Put, get back the same bytes, another owner sees nothing and cannot delete, the owner
/// deletes once.
pub(crate) async fn owner_isolation(store: &dyn ResponseStore) {
    let owner_a = format!("key-a-{}", new_response_id());
    let owner_b = format!("key-b-{}", new_response_id());
    let rec = record("gpt-test");
    let id = rec.id.clone();
    store
        .put(&owner_a, rec.clone(), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(store.get(&owner_a, &id).await.unwrap(), Some(rec));
    assert_eq!(store.get(&owner_b, &id).await.unwrap(), None);
    assert!(!store.delete(&owner_b, &id).await.unwrap());
    assert!(store.get(&owner_a, &id).await.unwrap().is_some());
    assert!(store.delete(&owner_a, &id).await.unwrap());
    assert!(!store.delete(&owner_a, &id).await.unwrap());
    assert_eq!(store.get(&owner_a, &id).await.unwrap(), None);
    assert_eq!(store.get(&owner_a, "resp_missing").await.unwrap(), None);
}

/// A record put with a short TTL is gone after it (and one with a long TTL is not).
pub(crate) async fn ttl_expiry(store: &dyn ResponseStore) {
    let owner = format!("key-{}", new_response_id());
    let short = record("m");
    let long = record("m");
    store
        .put(&owner, short.clone(), Duration::from_millis(300))
        .await
        .unwrap();
    store
        .put(&owner, long.clone(), Duration::from_secs(60))
        .await
        .unwrap();
    assert!(store.get(&owner, &short.id).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(store.get(&owner, &short.id).await.unwrap(), None);
    assert!(!store.delete(&owner, &short.id).await.unwrap());
    assert_eq!(store.get(&owner, &long.id).await.unwrap(), Some(long));
}

/// Putting the same id again replaces the record.
pub(crate) async fn overwrite(store: &dyn ResponseStore) {
    let owner = format!("key-{}", new_response_id());
    let first = record("m1");
    let mut second = first.clone();
    second.model = "m2".into();
    second.conversation = Bytes::from_static(b"[]");
    store
        .put(&owner, first, Duration::from_secs(60))
        .await
        .unwrap();
    store
        .put(&owner, second.clone(), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(store.get(&owner, &second.id).await.unwrap(), Some(second));
}

#[test]
fn ids_are_resp_and_48_hex_and_distinct() {
    let a = new_response_id();
    let b = new_response_id();
    assert_ne!(a, b);
    assert_eq!(a.len(), 53);
    assert!(a.starts_with("resp_"));
    assert!(a[5..].bytes().all(|c| c.is_ascii_hexdigit()));
    assert!(is_response_id(&a));
    assert!(!is_response_id("resp_"));
    assert!(!is_response_id("chatcmpl_1"));
    assert!(!is_response_id("resp_a/b"));
}

#[test]
fn debug_shows_no_content() {
    let r = record("m");
    let d = format!("{r:?}");
    assert!(!d.contains("hi"), "{d}");
    assert!(d.contains("conversation_bytes"));
}

mod memory {
    use super::*;

    #[tokio::test]
    async fn memory_owner_isolation() {
        owner_isolation(&MemoryResponseStore::new(100)).await;
    }

    #[tokio::test]
    async fn memory_ttl_expiry() {
        ttl_expiry(&MemoryResponseStore::new(100)).await;
    }

    #[tokio::test]
    async fn memory_overwrite() {
        overwrite(&MemoryResponseStore::new(100)).await;
    }

    #[tokio::test]
    async fn memory_is_bounded_oldest_evicted_first() {
        let s = MemoryResponseStore::new(3);
        let recs: Vec<_> = (0..5).map(|_| record("m")).collect();
        for r in &recs {
            s.put("k", r.clone(), Duration::from_secs(60))
                .await
                .unwrap();
        }
        assert_eq!(s.len(), 3);
        for (i, r) in recs.iter().enumerate() {
            let found = s.get("k", &r.id).await.unwrap().is_some();
            assert_eq!(found, i >= 2, "record {i}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn memory_expired_make_room_before_live_ones() {
        let s = MemoryResponseStore::new(2);
        let old = record("m");
        let live = record("m");
        s.put("k", old.clone(), Duration::from_secs(1))
            .await
            .unwrap();
        s.put("k", live.clone(), Duration::from_secs(600))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(2)).await;
        let new = record("m");
        s.put("k", new.clone(), Duration::from_secs(600))
            .await
            .unwrap();
        assert_eq!(s.len(), 2);
        assert!(s.get("k", &live.id).await.unwrap().is_some());
        assert!(s.get("k", &new.id).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn memory_churn_keeps_order_bounded() {
        let s = MemoryResponseStore::new(4);
        let r = record("m");
        for _ in 0..1000 {
            s.put("k", r.clone(), Duration::from_secs(60))
                .await
                .unwrap();
            let other = record("m");
            s.put("k", other.clone(), Duration::from_secs(60))
                .await
                .unwrap();
            assert!(s.delete("k", &other.id).await.unwrap());
        }
        assert_eq!(s.len(), 1);
        assert!(s.order_len() <= 2 * 4 + 16 + 1);
    }
}

mod memory_bytes {
    use super::*;

    #[tokio::test]
    async fn memory_byte_cap_evicts_oldest_and_refuses_a_giant() {
        let one = size_of_record();
        let s = MemoryResponseStore::new(100).max_bytes(one * 2 + one / 2);
        let recs: Vec<_> = (0..3).map(|_| record("m")).collect();
        for r in &recs {
            s.put("k", r.clone(), Duration::from_secs(60))
                .await
                .unwrap();
        }
        assert_eq!(s.len(), 2);
        assert!(s.bytes() <= one * 2 + one / 2);
        assert!(s.get("k", &recs[0].id).await.unwrap().is_none());
        assert!(s.get("k", &recs[2].id).await.unwrap().is_some());
        let mut giant = record("m");
        giant.conversation = Bytes::from(vec![b' '; one * 3]);
        assert!(s.put("k", giant, Duration::from_secs(60)).await.is_err());
        assert!(s.get("k", &recs[2].id).await.unwrap().is_some());
        // Deleting and overwriting keep the count exact.
        assert!(s.delete("k", &recs[2].id).await.unwrap());
        s.put("k", recs[1].clone(), Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(s.bytes(), one);
    }

    fn size_of_record() -> usize {
        let r = record("m");
        r.response.len() + r.conversation.len() + r.id.len() + r.model.len() + r.target.len()
    }
}
