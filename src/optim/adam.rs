//! `torch.optim.Adam` and `torch.optim.AdamW` (no amsgrad, no maximize).

use std::collections::HashMap;

use tch::{Kind, Tensor};

use super::base::{adopt, zero_grads, OptimError, Optimizer, Param};
use super::config::OptimizerConfig;

/// Per-parameter state, created on the parameter's first step as in PyTorch.
struct Moments {
    /// Steps taken for this parameter (PyTorch's `step`), a scalar int64 tensor in checkpoints.
    step: i64,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

/// Adam, or AdamW when `decoupled` (weight decay applied to the weights, not the gradient).
/// State: `<param>/step`, `<param>/exp_avg`, `<param>/exp_avg_sq`.
pub struct Adam {
    cfg: OptimizerConfig,
    decoupled: bool,
    params: Vec<Param>,
    moments: Vec<Option<Moments>>,
}

impl Adam {
    /// Adam (or AdamW when `decoupled`) over `params` with the settings of `cfg`.
    pub fn new(cfg: OptimizerConfig, params: Vec<Param>, decoupled: bool) -> Self {
        let moments = params.iter().map(|_| None).collect();
        Self { cfg, decoupled, params, moments }
    }
}

impl Optimizer for Adam {
    fn step(&mut self) {
        let _guard = tch::no_grad_guard();
        let c = &self.cfg;
        let [beta1, beta2] = c.betas;
        for (p, m) in self.params.iter_mut().zip(&mut self.moments) {
            let grad = p.grad();
            if !grad.defined() {
                continue;
            }
            let m = m.get_or_insert_with(|| Moments {
                step: 0,
                exp_avg: p.tensor.zeros_like(),
                exp_avg_sq: p.tensor.zeros_like(),
            });
            m.step += 1;
            let mut grad = grad;
            if c.weight_decay != 0.0 {
                if self.decoupled {
                    // param.mul_(1 - lr * weight_decay)
                    let _ = p.tensor.g_mul_scalar_(1.0 - c.lr * c.weight_decay);
                } else {
                    // grad = grad.add(param, alpha=weight_decay)
                    grad = &grad + &p.tensor * c.weight_decay;
                }
            }
            // exp_avg.lerp_(grad, 1 - beta1)
            let _ = m.exp_avg.lerp_(&grad, 1.0 - beta1);
            // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            let _ = m.exp_avg_sq.g_mul_scalar_(beta2);
            // Same operations in the same order as before, in place where a temporary is ours:
            // fewer allocations per parameter, identical rounding.
            let mut g2 = &grad * (1.0 - beta2);
            let _ = g2.g_mul_(&grad);
            let _ = m.exp_avg_sq.g_add_(&g2);
            // Bias corrections in double precision, as Python computes them.
            let step = m.step as f64;
            let bias_correction1 = 1.0 - beta1.powf(step);
            let bias_correction2 = 1.0 - beta2.powf(step);
            let step_size = c.lr / bias_correction1;
            // denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
            let mut denom = m.exp_avg_sq.sqrt();
            let _ = denom.g_div_scalar_(bias_correction2.sqrt());
            let _ = denom.g_add_scalar_(c.eps);
            // param.addcdiv_(exp_avg, denom, value=-step_size)
            let mut update = m.exp_avg.divide(&denom);
            let _ = update.g_mul_scalar_(step_size);
            let _ = p.tensor.g_sub_(&update);
        }
    }

    fn zero_grad(&mut self) {
        zero_grads(&self.params);
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (p, m) in self.params.iter().zip(&self.moments) {
            if let Some(m) = m {
                out.push((format!("{}/step", p.name), Tensor::from(m.step)));
                out.push((format!("{}/exp_avg", p.name), m.exp_avg.shallow_clone()));
                out.push((format!("{}/exp_avg_sq", p.name), m.exp_avg_sq.shallow_clone()));
            }
        }
        out
    }

    fn load_state(&mut self, mut state: HashMap<String, Tensor>) -> Result<(), OptimError> {
        let mut moments: Vec<Option<Moments>> = self.params.iter().map(|_| None).collect();
        for (p, slot) in self.params.iter().zip(&mut moments) {
            let names = ["step", "exp_avg", "exp_avg_sq"].map(|s| format!("{}/{s}", p.name));
            let found = names.clone().map(|n| state.remove(&n));
            match found {
                [None, None, None] => {}
                [Some(step), Some(avg), Some(sq)] => {
                    if step.numel() != 1 {
                        return Err(OptimError::Mismatch {
                            name: names[0].clone(),
                            expected: "a scalar".into(),
                            found: format!("{:?}", step.size()),
                        });
                    }
                    *slot = Some(Moments {
                        step: step.to_kind(Kind::Int64).int64_value(&[]),
                        exp_avg: adopt(&names[1], avg, &p.tensor)?,
                        exp_avg_sq: adopt(&names[2], sq, &p.tensor)?,
                    });
                }
                partial => {
                    let missing = names.iter().zip(&partial).find(|(_, t)| t.is_none()).map(|(n, _)| n);
                    return Err(OptimError::Mismatch {
                        name: missing.cloned().unwrap_or_default(),
                        expected: "present, as its sibling slots are".into(),
                        found: "nothing".into(),
                    });
                }
            }
        }
        if let Some(name) = state.into_keys().min() {
            return Err(OptimError::Unexpected { name });
        }
        self.moments = moments;
        Ok(())
    }

    fn reset_state(&mut self) {
        self.moments.iter_mut().for_each(|m| *m = None);
    }

    fn config(&self) -> &OptimizerConfig {
        &self.cfg
    }

    fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }
}
