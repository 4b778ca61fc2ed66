//! Global gradient-norm clipping (as `torch.nn.utils.clip_grad_norm_`; burn's own clipping is
//! per parameter) and the finite check that makes a bad step skippable.

use chex_model::burn::module::{Module, ModuleVisitor, Param};
use chex_model::burn::optim::GradientsParams;
use chex_model::burn::tensor::Tensor;

struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    total: f64,
}

impl ModuleVisitor for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            self.total += g.square().sum().into_scalar::<f32>() as f64;
        }
    }
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl ModuleVisitor for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            self.grads.register(param.id, g * self.factor);
        }
    }
}

/// The global L2 norm of the gradients; when above `max_norm` every gradient is scaled by
/// `max_norm / norm`. Returns the norm before clipping (NaN or infinite when a gradient is).
pub fn clip_global_norm<M: Module>(model: &M, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    let mut norm = SquaredNorm { grads, total: 0.0 };
    model.visit(&mut norm);
    let total = norm.total.sqrt();
    if total.is_finite() && max_norm > 0.0 && total > max_norm {
        let mut scale = Scale {
            grads,
            factor: max_norm / (total + 1e-6),
        };
        model.visit(&mut scale);
    }
    total
}
