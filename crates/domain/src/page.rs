//! Keyset pagination. Lists are ordered newest first by id (UUIDv7 ids sort
//! by creation time), and the cursor is the id of the last item returned, so
//! a page never skips or repeats rows when others are inserted meanwhile.

use serde::Serialize;
use uuid::Uuid;

pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 200;

/// An opaque position in a list: pass a page's `next_cursor` back to get the next page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor(Uuid);

impl Cursor {
    pub fn after(id: Uuid) -> Self {
        Self(id)
    }

    pub fn id(&self) -> Uuid {
        self.0
    }

    pub fn encode(&self) -> String {
        self.0.simple().to_string()
    }

    pub fn decode(text: &str) -> Result<Self, String> {
        Uuid::try_parse(text.trim())
            .map(Self)
            .map_err(|_| "is not a cursor from a previous page: pass the `next_cursor` value unchanged".to_owned())
    }
}

/// Which page to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: u32,
    pub after: Option<Cursor>,
}

impl Default for PageRequest {
    fn default() -> Self {
        Self { limit: DEFAULT_PAGE_SIZE, after: None }
    }
}

impl PageRequest {
    /// Parses the `limit` and `cursor` query parameters.
    pub fn parse(limit: Option<u32>, cursor: Option<&str>) -> Result<Self, (&'static str, String)> {
        let limit = match limit {
            None => DEFAULT_PAGE_SIZE,
            Some(n) if (1..=MAX_PAGE_SIZE).contains(&n) => n,
            Some(n) => {
                return Err(("limit", format!("must be between 1 and {MAX_PAGE_SIZE} (got {n})")));
            }
        };
        let after = match cursor {
            None | Some("") => None,
            Some(text) => Some(Cursor::decode(text).map_err(|msg| ("cursor", msg))?),
        };
        Ok(Self { limit, after })
    }
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass this as `cursor` to read the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from up to `limit + 1` rows read in list order: the extra
    /// row only tells that another page exists.
    pub fn from_rows(mut rows: Vec<T>, limit: u32, id_of: impl Fn(&T) -> Uuid) -> Self {
        let has_more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next_cursor = if has_more { rows.last().map(|row| Cursor::after(id_of(row)).encode()) } else { None };
        Self { items: rows, next_cursor }
    }

    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page { items: self.items.into_iter().map(f).collect(), next_cursor: self.next_cursor }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_extra_row_yields_a_cursor_at_the_last_kept_row() {
        let ids: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
        let page = Page::from_rows(ids.clone(), 3, |id| *id);
        assert_eq!(page.items.len(), 3);
        assert_eq!(page.next_cursor, Some(Cursor::after(ids[2]).encode()));
    }

    #[test]
    fn the_last_page_has_no_cursor() {
        let ids: Vec<Uuid> = (0..2).map(|_| Uuid::now_v7()).collect();
        assert_eq!(Page::from_rows(ids, 3, |id| *id).next_cursor, None);
    }

    #[test]
    fn limits_outside_the_range_name_the_parameter() {
        assert_eq!(PageRequest::parse(Some(0), None).unwrap_err().0, "limit");
        assert_eq!(PageRequest::parse(Some(201), None).unwrap_err().0, "limit");
        assert_eq!(PageRequest::parse(None, Some("zzz")).unwrap_err().0, "cursor");
        assert_eq!(PageRequest::parse(None, None).unwrap().limit, DEFAULT_PAGE_SIZE);
    }

    #[test]
    fn a_cursor_round_trips() {
        let cursor = Cursor::after(Uuid::now_v7());
        assert_eq!(Cursor::decode(&cursor.encode()).unwrap(), cursor);
    }
}
