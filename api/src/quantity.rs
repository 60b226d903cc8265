//! Kubernetes quantities (`500m`, `64Mi`, `1e3`) turned into the integers a
//! cgroup takes.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Why a quantity cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Not in the quantity grammar.
    #[error("{0:?} is not a Kubernetes quantity (examples: 500m, 2, 64Mi, 1Gi)")]
    Syntax(String),
    /// Negative amounts make no sense for limits.
    #[error("{0:?} must not be negative")]
    Negative(String),
}

/// Parses a quantity into its value in base units (cores or bytes).
pub fn parse(q: &str) -> Result<f64, QuantityError> {
    let s = q.trim();
    let err = || QuantityError::Syntax(q.to_string());
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    if num.is_empty() || num == "+" || num == "-" || num == "." {
        return Err(err());
    }
    if num[1..].contains(['+', '-']) || num.matches('.').count() > 1 {
        return Err(err());
    }
    let value: f64 = num.parse().map_err(|_| err())?;
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0f64.powi(2),
        "Gi" => 1024.0f64.powi(3),
        "Ti" => 1024.0f64.powi(4),
        "Pi" => 1024.0f64.powi(5),
        "Ei" => 1024.0f64.powi(6),
        e if e.starts_with(['e', 'E']) => {
            let exp: i32 = e[1..].parse().map_err(|_| err())?;
            10f64.powi(exp)
        }
        _ => return Err(err()),
    };
    let v = value * multiplier;
    if !v.is_finite() {
        return Err(err());
    }
    if v < 0.0 {
        return Err(QuantityError::Negative(q.to_string()));
    }
    Ok(v)
}

/// CPU quantity in millicores, rounded up (`1.5` → 1500, `1m` → 1).
pub fn cpu_millis(q: &Quantity) -> Result<u64, QuantityError> {
    parse(&q.0).map(|v| (v * 1000.0).ceil() as u64)
}

/// Memory quantity in bytes, rounded up.
pub fn bytes(q: &Quantity) -> Result<u64, QuantityError> {
    parse(&q.0).map(|v| v.ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity(s.to_string())
    }

    #[test]
    fn cpu_and_memory_forms() {
        assert_eq!(cpu_millis(&q("500m")).unwrap(), 500);
        assert_eq!(cpu_millis(&q("2")).unwrap(), 2000);
        assert_eq!(cpu_millis(&q("0.25")).unwrap(), 250);
        assert_eq!(bytes(&q("64Mi")).unwrap(), 64 << 20);
        assert_eq!(bytes(&q("1G")).unwrap(), 1_000_000_000);
        assert_eq!(bytes(&q("1e3")).unwrap(), 1000);
        assert_eq!(bytes(&q("128974848")).unwrap(), 128_974_848);
    }

    #[test]
    fn garbage_and_negatives_are_errors() {
        for s in ["", "abc", "10 bananas", "1.2.3", "Mi", "5Xi", "1e", "--1"] {
            assert!(parse(s).is_err(), "{s}");
        }
        assert_eq!(parse("-1"), Err(QuantityError::Negative("-1".to_string())));
    }
}
