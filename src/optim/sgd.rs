//! `torch.optim.SGD` (momentum, dampening, Nesterov, L2 weight decay).

use std::collections::HashMap;

use tch::Tensor;

use super::base::{adopt, zero_grads, OptimError, Optimizer, Param};
use super::config::OptimizerConfig;

/// Stochastic gradient descent; state: `<param>/momentum_buffer` once momentum is used.
pub struct Sgd {
    cfg: OptimizerConfig,
    params: Vec<Param>,
    momentum_buffer: Vec<Option<Tensor>>,
}

impl Sgd {
    /// SGD over `params` with the settings of `cfg`.
    pub fn new(cfg: OptimizerConfig, params: Vec<Param>) -> Self {
        let momentum_buffer = params.iter().map(|_| None).collect();
        Self { cfg, params, momentum_buffer }
    }
}

impl Optimizer for Sgd {
    fn step(&mut self) {
        let _guard = tch::no_grad_guard();
        let c = &self.cfg;
        for (p, buf) in self.params.iter_mut().zip(&mut self.momentum_buffer) {
            let grad = p.grad();
            if !grad.defined() {
                continue;
            }
            // grad = grad.add(param, alpha=weight_decay)
            let mut grad = if c.weight_decay != 0.0 { &grad + &p.tensor * c.weight_decay } else { grad };
            if c.momentum != 0.0 {
                let b = match buf {
                    // buf = torch.clone(grad).detach()
                    None => buf.insert(grad.copy()),
                    // buf.mul_(momentum).add_(grad, alpha=1 - dampening)
                    Some(b) => {
                        let _ = b.g_mul_scalar_(c.momentum);
                        let _ = b.g_add_(&(&grad * (1.0 - c.dampening)));
                        b
                    }
                };
                grad = if c.nesterov { &grad + &*b * c.momentum } else { b.shallow_clone() };
            }
            // param.add_(grad, alpha=-lr)
            let _ = p.tensor.g_sub_(&(grad * c.lr));
        }
    }

    fn zero_grad(&mut self) {
        zero_grads(&self.params);
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .zip(&self.momentum_buffer)
            .filter_map(|(p, b)| b.as_ref().map(|b| (format!("{}/momentum_buffer", p.name), b.shallow_clone())))
            .collect()
    }

    fn load_state(&mut self, mut state: HashMap<String, Tensor>) -> Result<(), OptimError> {
        let mut buffers: Vec<Option<Tensor>> = self.params.iter().map(|_| None).collect();
        for (p, slot) in self.params.iter().zip(&mut buffers) {
            let name = format!("{}/momentum_buffer", p.name);
            if let Some(t) = state.remove(&name) {
                *slot = Some(adopt(&name, t, &p.tensor)?);
            }
        }
        if let Some(name) = state.into_keys().min() {
            return Err(OptimError::Unexpected { name });
        }
        self.momentum_buffer = buffers;
        Ok(())
    }

    fn reset_state(&mut self) {
        self.momentum_buffer.iter_mut().for_each(|b| *b = None);
    }

    fn config(&self) -> &OptimizerConfig {
        &self.cfg
    }

    fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }
}
