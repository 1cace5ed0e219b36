use viberglass_domain::{NewTicket, TicketId, TicketInput};
use viberglass_store::{NewAttachment, StoreError};
use viberglass_testkit::{TestBackend, TestDb, backend_tests};

use crate::projects::new_project;

backend_tests!(attachments_keep_their_bytes_and_belong_to_one_ticket);

async fn attachments_keep_their_bytes_and_belong_to_one_ticket(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let project = store.create_project(new_project(serde_json::json!({"name": "App"}))).await.unwrap();
    let input: TicketInput = serde_json::from_value(serde_json::json!({"title": "Crash"})).unwrap();
    let ticket = store.create_ticket(project.id, NewTicket::parse(input).unwrap(), None).await.unwrap();
    // Every byte value survives, NUL and invalid UTF-8 included.
    let bytes: Vec<u8> = (0..=255u8).chain([0, 0xff, 0xfe]).collect();
    let first = store
        .add_attachment(NewAttachment {
            ticket_id: ticket.id,
            filename: "dump.bin".into(),
            content_type: "application/octet-stream".into(),
            content: bytes.clone(),
            uploaded_by: None,
        })
        .await
        .unwrap();
    assert_eq!(first.size, 259);
    assert_eq!(first.sha256.len(), 64);
    let second = store
        .add_attachment(NewAttachment {
            ticket_id: ticket.id,
            filename: "error.log".into(),
            content_type: "text/plain".into(),
            content: b"boom\n".to_vec(),
            uploaded_by: None,
        })
        .await
        .unwrap();
    assert_eq!(store.list_attachments(ticket.id).await.unwrap(), [first.clone(), second]);
    let (read, content) = store.attachment_content(ticket.id, first.id).await.unwrap();
    assert_eq!((read, content), (first.clone(), bytes));
    // Through another ticket, or for a ticket that does not exist: not found.
    let other: TicketInput = serde_json::from_value(serde_json::json!({"title": "Other"})).unwrap();
    let other = store.create_ticket(project.id, NewTicket::parse(other).unwrap(), None).await.unwrap();
    assert!(matches!(store.attachment_content(other.id, first.id).await, Err(StoreError::NotFound { .. })));
    assert!(store.list_attachments(other.id).await.unwrap().is_empty());
    let missing = store
        .add_attachment(NewAttachment {
            ticket_id: TicketId::new(),
            filename: "x".into(),
            content_type: "text/plain".into(),
            content: b"x".to_vec(),
            uploaded_by: None,
        })
        .await;
    assert!(missing.is_err(), "an attachment needs its ticket");
}
