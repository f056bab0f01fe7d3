//! The network seam (src/net.rs): the engine runs whatever it has kernels for, burn the rest, the
//! choice is made in one place and a fallback says why; callers see the same numbers either way.

mod common;

use burn::tensor::{Device, Tensor, TensorData};
use common::*;
use vgg::config::{Head, VggConfig};
use vgg::engine::{Engine, HalfKind};
use vgg::model::Vgg;
use vgg::net::{self, BuildOptions, NetError, RunsOn};
use vgg::weights::Strict;

fn small(arch: &str) -> VggConfig {
    let head = Head::Imagenet { hidden: 32, pool: [7, 7] };
    VggConfig::from_arch(arch).unwrap().with_width(0.125).with_head(head).with_num_classes(4)
}

fn with_formula(config: &VggConfig) -> Vgg {
    let mut m = Vgg::new(config, &Device::default()).unwrap();
    m.load_state_dict(&formula_state_dict(m.plan()), Strict::Yes).unwrap();
    m
}

fn burn_logits(m: &Vgg, x: &[f32], dims: [usize; 4]) -> Vec<f32> {
    values(m.forward(Tensor::<4>::from_data(TensorData::new(x.to_vec(), dims), &Device::default())))
}

#[test]
fn the_engine_runs_what_it_has_kernels_for() {
    let config = small("vgg11_bn");
    let m = with_formula(&config);
    let dims = [2, 3, 64, 64];
    let x = values(formula_input("net", dims, &Device::default()));
    let net = net::build(&config, m.state_dict(), BuildOptions::default()).unwrap();
    assert!(matches!(net.runs_on(), RunsOn::Engine(_)), "{}", net.runs_on());
    assert_eq!(net.runs_on().fallback(), None);
    // Exactly the engine's numbers, and burn's within f32 rounding.
    assert_eq!(net.logits(&x, dims), Engine::new(&m).unwrap().forward(&x, dims));
    let want: Vec<f64> = burn_logits(&m, &x, dims).iter().map(|&v| v as f64).collect();
    assert!(rel_err(&net.logits(&x, dims), &want) < 1e-5);
    // for_model makes the same choice from a model.
    assert!(matches!(net::for_model(&m).runs_on(), RunsOn::Engine(_)));
}

#[test]
fn burn_runs_local_response_normalisation_and_says_why() {
    let config = small("vgg11_lrn");
    let m = with_formula(&config);
    let dims = [1, 3, 64, 64];
    let x = values(formula_input("net_lrn", dims, &Device::default()));
    for net in [net::build(&config, m.state_dict(), BuildOptions::default()).unwrap(), net::for_model(&m)] {
        let why = net.runs_on().fallback().expect("a fallback gives its reason").to_string();
        assert!(why.contains("local response normalisation"), "{why}");
        assert_eq!(net.logits(&x, dims), burn_logits(&m, &x, dims));
        // What only the engine does is an error naming the model and the reason, not a panic.
        let err = net.dense_logits(&x, dims).unwrap_err().to_string();
        assert!(err.contains("dense evaluation") && err.contains("vgg11_lrn") && err.contains(&why), "{err}");
    }
    let half = BuildOptions { half: Some(HalfKind::Bf16), ..Default::default() };
    match net::build(&config, m.state_dict(), half) {
        Err(e @ NetError::NeedsEngine { .. }) => {
            assert!(e.to_string().contains("16-bit weight storage"), "{e}")
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("16-bit storage on burn's path was accepted"),
    }
}

#[test]
fn burn_is_taken_when_asked_for_without_a_fallback_note() {
    let config = small("vgg11");
    let m = with_formula(&config);
    let burn = BuildOptions { burn: true, ..Default::default() };
    let net = net::build(&config, m.state_dict(), burn).unwrap();
    assert_eq!(net.runs_on(), RunsOn::Burn { because: None });
    assert_eq!(net.runs_on().fallback(), None);
    let dims = [1, 3, 32, 32];
    let x = values(formula_input("net_burn", dims, &Device::default()));
    assert_eq!(net.logits(&x, dims), burn_logits(&m, &x, dims));
}

#[test]
fn partial_weights_run_on_the_engine_with_the_rest_initialised() {
    // Trunk-only weights under a new head: burn fills the head in as torchvision initialises it,
    // then the engine takes the whole network over.
    let config = small("vgg11");
    let m = with_formula(&config);
    let trunk: vgg::weights::StateDict =
        m.state_dict().into_iter().filter(|(k, _)| k.starts_with("features.")).collect();
    assert!(net::build(&config, trunk.clone(), BuildOptions::default()).is_err(), "strict loading needs the head");
    let opts = BuildOptions { strict: Strict::No, ..Default::default() };
    let net = net::build(&config, trunk.clone(), opts).unwrap();
    assert!(matches!(net.runs_on(), RunsOn::Engine(_)));
    let sd = net.state_dict();
    for (k, t) in &trunk {
        assert_eq!(sd[k].data, t.data, "{k} is the given tensor");
    }
    let fc = &sd["classifier.0.weight"];
    assert_eq!(fc.shape, m.state_dict()["classifier.0.weight"].shape);
    assert_ne!(fc.data, m.state_dict()["classifier.0.weight"].data, "the head is initialised, not the formula's");
}
