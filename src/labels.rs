//! Class names.

/// The 1000 ImageNet-1k class names in torchvision's order (`weights.meta["categories"]`).
pub fn imagenet() -> &'static [&'static str] {
    static NAMES: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| include_str!("imagenet_classes.txt").lines().collect())
}

/// The ten Fashion-MNIST classes, in label order.
pub const FASHION_MNIST: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

#[cfg(test)]
mod tests {
    #[test]
    fn imagenet_has_1000_names_in_torchvision_order() {
        let n = super::imagenet();
        assert_eq!(n.len(), 1000);
        assert_eq!(n[0], "tench");
        assert_eq!(n[281], "tabby");
        assert_eq!(n[999], "toilet tissue");
    }
}
