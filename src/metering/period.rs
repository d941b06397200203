//! Periods: when a counter starts again from zero, as UTC calendar windows.

/// How long a counter window's key outlives the window (for billing reads).
const WINDOW_RETENTION_SECONDS: i64 = 35 * 24 * 3600;

/// When a counter starts again from zero (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// Each calendar day.
    Day,
    /// Each calendar month.
    Month,
    /// Never (`"never"` or `"none"`).
    Never,
}

impl Period {
    /// Parses `day`, `month`, `never` or `none`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "day" => Some(Self::Day),
            "month" => Some(Self::Month),
            "never" | "none" => Some(Self::Never),
            _ => None,
        }
    }

    /// The window holding `now_ms` (Unix milliseconds): its id, used in the
    /// counter's key, and when it ends (`None` for a period that never ends).
    pub fn window(self, now_ms: i64) -> (String, Option<i64>) {
        let (start, end) = self.bounds(now_ms);
        let (year, month, day) = civil_from_days(start.div_euclid(86_400_000));
        let id = match self {
            Self::Day => format!("{year:04}-{month:02}-{day:02}"),
            Self::Month => format!("{year:04}-{month:02}"),
            Self::Never => "all".to_string(),
        };
        (id, end)
    }

    /// Start and end (Unix milliseconds) of the window holding `now_ms`:
    /// what [`Period::window`] says without building its id (a period that
    /// never ends starts at 0).
    pub fn bounds(self, now_ms: i64) -> (i64, Option<i64>) {
        let days = now_ms.div_euclid(86_400_000);
        match self {
            Self::Day => (days * 86_400_000, Some((days + 1) * 86_400_000)),
            Self::Month => {
                let (year, month, _) = civil_from_days(days);
                let (next_year, next_month) = if month == 12 {
                    (year + 1, 1)
                } else {
                    (year, month + 1)
                };
                (
                    days_from_civil(year, month, 1) * 86_400_000,
                    Some(days_from_civil(next_year, next_month, 1) * 86_400_000),
                )
            }
            Self::Never => (0, None),
        }
    }
}

/// Year, month (1-12), day (1-31) of a count of days since 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}

/// Days since 1970-01-01 of a civil date (`days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let month = i64::from(month);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// When a window that ends at `end` (Unix ms) has its counter expire (Unix
/// seconds), 0 for never.
pub(crate) fn expire_at(end: Option<i64>) -> i64 {
    end.map_or(0, |end| end.div_euclid(1000) + WINDOW_RETENTION_SECONDS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(date: &str) -> i64 {
        // `YYYY-MM-DDTHH:MM:SSZ`
        let year: i64 = date[0..4].parse().unwrap();
        let month: u32 = date[5..7].parse().unwrap();
        let day: u32 = date[8..10].parse().unwrap();
        let seconds: i64 = date[11..13].parse::<i64>().unwrap() * 3600
            + date[14..16].parse::<i64>().unwrap() * 60
            + date[17..19].parse::<i64>().unwrap();
        days_from_civil(year, month, day) * 86_400_000 + seconds * 1000
    }

    #[test]
    fn windows_follow_the_utc_calendar() {
        let last_second = ms("2026-11-30T23:59:59Z");
        assert_eq!(
            Period::Month.window(last_second),
            ("2026-11".to_string(), Some(ms("2026-12-01T00:00:00Z")))
        );
        assert_eq!(Period::Month.window(last_second + 1000).0, "2026-12");
        assert_eq!(
            Period::Month.window(ms("2026-12-31T12:00:00Z")).1,
            Some(ms("2027-01-01T00:00:00Z"))
        );
        assert_eq!(
            Period::Day.window(ms("2028-02-28T23:00:00Z")),
            ("2028-02-28".to_string(), Some(ms("2028-02-29T00:00:00Z")))
        );
        assert_eq!(
            Period::Day.window(ms("2028-02-29T00:00:00Z")).0,
            "2028-02-29"
        );
        assert_eq!(Period::Never.window(0), ("all".to_string(), None));
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        for days in [-800_000, -1, 0, 59, 365 * 400, 20_000_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn periods_parse() {
        assert_eq!(Period::parse("none"), Some(Period::Never));
        assert_eq!(Period::parse("week"), None);
    }
}
