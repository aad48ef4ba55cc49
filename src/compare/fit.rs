//! Least-squares line through (connections, bytes): the slope is the cost of one more
//! connection, R² says how well a straight line explains the samples.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Fit {
    /// Bytes per connection.
    pub slope: f64,
    /// Bytes at zero connections.
    pub intercept: f64,
    /// Coefficient of determination, 0..1 (1 when every point is on the line).
    pub r2: f64,
}

/// Fits y = slope·x + intercept; None with fewer than two distinct x.
pub fn linear(points: &[(f64, f64)]) -> Option<Fit> {
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    if points.len() < 2 || sxx == 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    let slope = sxy / sxx;
    let intercept = mean_y - slope * mean_x;
    let ss_total: f64 = points.iter().map(|p| (p.1 - mean_y).powi(2)).sum();
    let ss_residual: f64 = points.iter().map(|p| (p.1 - (slope * p.0 + intercept)).powi(2)).sum();
    let r2 = if ss_total == 0.0 {
        1.0
    } else {
        1.0 - ss_residual / ss_total
    };
    Some(Fit { slope, intercept, r2 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_a_line_and_scores_noise() {
        let exact: Vec<(f64, f64)> = (0..6)
            .map(|i| (i as f64 * 1000.0, 5e6 + 7000.0 * i as f64 * 1000.0))
            .collect();
        let fit = linear(&exact).unwrap();
        assert!((fit.slope - 7000.0).abs() < 1e-6 && (fit.intercept - 5e6).abs() < 1e-3);
        assert!((fit.r2 - 1.0).abs() < 1e-12);
        let noisy = [(0.0, 0.0), (1.0, 3.0), (2.0, 1.0), (3.0, 4.0)];
        let fit = linear(&noisy).unwrap();
        assert!(fit.r2 > 0.0 && fit.r2 < 1.0);
        assert_eq!(linear(&[(1.0, 2.0)]), None);
        assert_eq!(linear(&[(1.0, 2.0), (1.0, 3.0)]), None);
    }
}
