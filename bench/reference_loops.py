"""Reference training loops written the way the diffusers example scripts write them.

* :func:`textual_inversion` follows ``examples/textual_inversion/textual_inversion.py``: placeholder token added and
  initialised from the initializer token, everything frozen except the token-embedding matrix, AdamW on
  ``text_encoder.get_input_embeddings().parameters()``, and per step: ``vae.encode(pixels).latent_dist.sample()``
  x scaling factor, ``randn_like`` noise, ``randint`` timesteps, ``noise_scheduler.add_noise``,
  ``text_encoder(input_ids)[0]``, U-Net, target by prediction type (noise or ``get_velocity``), MSE,
  ``accelerator.backward``, optimizer / LR-scheduler step, ``zero_grad``, then the original rows of every other
  token copied back (``index_no_updates``). No gradient clipping (the script has none).
* :func:`unet_finetune` follows ``examples/text_to_image/train_text_to_image.py``: AdamW on ``unet.parameters()``;
  per step VAE encode, frozen ``text_encoder(input_ids)[0]``, U-Net, MSE, backward,
  ``accelerator.clip_grad_norm_(unet.parameters(), max_grad_norm)``, step.
* :func:`lora` follows ``examples/dreambooth/train_dreambooth_lora.py`` (PEFT version): frozen VAE / text encoder /
  U-Net, ``unet.add_adapter(LoraConfig(r, lora_alpha, init_lora_weights="gaussian", target_modules=[to_k, to_q, to_v,
  to_out.0]))``, AdamW on the LoRA parameters; per step VAE encode, ``encode_prompt`` (text encoder, no attention
  mask), U-Net, MSE, backward, clip, step. Prior preservation off.

The models are loaded from the foundation folder with ``from_pretrained(..., subfolder=...)`` and the training
noise scheduler with ``DDPMScheduler.from_pretrained(..., subfolder="scheduler")``, as the scripts do. What the
scripts do in their ``Dataset`` / ``DataLoader`` (PIL decoding, resizing, tokenising) is done once up front here
(pixels via :func:`cxrgen.adapt.trainer.images_to_tensor`, token ids padded to ``model_max_length``): that favours
the reference, so a ratio above 1 is not an artefact of data loading. Batches are drawn like ``shuffle=True``
(a fresh permutation per epoch); the textual-inversion template is picked at random per image and step, as the
script's dataset does.

Each function returns ``{"setup_s", "stamps", "losses"}``: one-time set-up seconds (model loading, token set-up,
optimizer) and, per optimizer step, the cumulative seconds at its end, measured from the start of the loop
exactly like :func:`cxrgen.adapt.trainer.run_training` stamps its ``training_log.csv``.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]


def load_components(foundation):
    """(tokenizer, text_encoder, vae, unet, noise_scheduler) the way the diffusers scripts load them."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    f = str(foundation)
    tokenizer = CLIPTokenizer.from_pretrained(f, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(f, subfolder="text_encoder")
    vae = AutoencoderKL.from_pretrained(f, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(f, subfolder="unet")
    noise_scheduler = DDPMScheduler.from_pretrained(f, subfolder="scheduler")
    return tokenizer, text_encoder, vae, unet, noise_scheduler


def _ids(tokenizer, prompts) -> torch.Tensor:
    return tokenizer(list(prompts), padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                     return_tensors="pt").input_ids


def _diffusion_step(vae, text_encoder, unet, noise_scheduler, pixels, input_ids):
    """Loss of one batch as the scripts compute it (VAE and text encoder run on every step)."""
    latents = vae.encode(pixels).latent_dist.sample().detach() * vae.config.scaling_factor
    noise = torch.randn_like(latents)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                              device=latents.device).long()
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    encoder_hidden_states = text_encoder(input_ids, return_dict=False)[0]
    model_pred = unet(noisy, timesteps, encoder_hidden_states).sample
    if noise_scheduler.config.prediction_type == "epsilon":
        target = noise
    elif noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise ValueError(f"unknown prediction type {noise_scheduler.config.prediction_type}")
    return F.mse_loss(model_pred.float(), target.float(), reduction="mean")


class _Batches:
    """``DataLoader(shuffle=True)``-like index batches: a new permutation per epoch, seeded."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.bs = n, batch_size
        self.g = torch.Generator().manual_seed(seed)
        self.buf = torch.empty(0, dtype=torch.long)

    def next(self) -> torch.Tensor:
        while len(self.buf) < self.bs:
            self.buf = torch.cat([self.buf, torch.randperm(self.n, generator=self.g)])
        out, self.buf = self.buf[: self.bs], self.buf[self.bs:]
        return out


def _optimizer(params, lr: float, steps: int):
    from diffusers.optimization import get_scheduler

    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    return opt, get_scheduler("constant", optimizer=opt, num_warmup_steps=0, num_training_steps=steps)


def _run(steps: int, step_fn) -> dict:
    stamps, losses = [], []
    t0 = time.perf_counter()
    for k in range(steps):
        losses.append(step_fn(k))
        stamps.append(time.perf_counter() - t0)
    return {"stamps": stamps, "losses": losses}


def textual_inversion(foundation, images, steps: int, batch_size: int, resolution: int, lr: float = 5e-3,
                      token: str = "<lung-xray>", initializer: str = "radiology", templates=None, seed: int = 0) -> dict:
    from cxrgen.adapt.textual_inversion import OBJECT_TEMPLATES
    from cxrgen.adapt.trainer import images_to_tensor
    from cxrgen.engine import make_accelerator

    t_setup = time.perf_counter()
    torch.manual_seed(seed)
    accelerator = make_accelerator("no")
    tokenizer, text_encoder, vae, unet, noise_scheduler = load_components(foundation)
    tokenizer.add_tokens([token])
    init_ids = tokenizer.encode(initializer, add_special_tokens=False)
    placeholder_id = tokenizer.convert_tokens_to_ids(token)
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # the row is overwritten below
    with torch.no_grad():  # the script requires a one-token initializer; a split word starts from its pieces' mean
        text_encoder.get_input_embeddings().weight[placeholder_id] = \
            text_encoder.get_input_embeddings().weight[init_ids].mean(0)
    vae.requires_grad_(False)
    unet.requires_grad_(False)
    # the script freezes text_model.encoder / final_layer_norm / position_embedding (transformers 5 dropped the
    # text_model level): everything but the token embedding
    text_model = getattr(text_encoder, "text_model", text_encoder)
    text_model.encoder.requires_grad_(False)
    text_model.final_layer_norm.requires_grad_(False)
    text_model.embeddings.position_embedding.requires_grad_(False)
    optimizer, lr_scheduler = _optimizer(text_encoder.get_input_embeddings().parameters(), lr, steps)
    text_encoder, optimizer, lr_scheduler = accelerator.prepare(text_encoder, optimizer, lr_scheduler)
    pixels = images_to_tensor(images, resolution)
    choices = _ids(tokenizer, [t.format(token) for t in (templates or OBJECT_TEMPLATES)])
    orig = accelerator.unwrap_model(text_encoder).get_input_embeddings().weight.data.clone()
    index_no_updates = torch.ones((len(tokenizer),), dtype=torch.bool)
    index_no_updates[placeholder_id] = False
    batches = _Batches(len(pixels), batch_size, seed)
    text_encoder.train()
    setup_s = time.perf_counter() - t_setup

    def step(_k):
        idx = batches.next()
        ids = choices[torch.randint(len(choices), (len(idx),))]
        loss = _diffusion_step(vae, text_encoder, unet, noise_scheduler, pixels[idx], ids)
        accelerator.backward(loss)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
        with torch.no_grad():
            accelerator.unwrap_model(text_encoder).get_input_embeddings().weight[index_no_updates] = \
                orig[index_no_updates]
        return float(loss.detach())

    return {"setup_s": setup_s, **_run(steps, step)}


def _prompted(foundation, images, prompts, steps, batch_size, resolution, lr, seed, max_grad_norm, lora_rank):
    from cxrgen.adapt.trainer import images_to_tensor
    from cxrgen.engine import make_accelerator

    t_setup = time.perf_counter()
    torch.manual_seed(seed)
    accelerator = make_accelerator("no")
    tokenizer, text_encoder, vae, unet, noise_scheduler = load_components(foundation)
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    if lora_rank:
        from peft import LoraConfig

        unet.requires_grad_(False)
        unet.add_adapter(LoraConfig(r=lora_rank, lora_alpha=lora_rank, init_lora_weights="gaussian",
                                    target_modules=LORA_TARGETS))
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer, lr_scheduler = _optimizer(params, lr, steps)
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    pixels = images_to_tensor(images, resolution)
    ids = _ids(tokenizer, prompts)
    batches = _Batches(len(pixels), batch_size, seed)
    unet.train()
    setup_s = time.perf_counter() - t_setup

    def step(_k):
        idx = batches.next()
        loss = _diffusion_step(vae, text_encoder, unet, noise_scheduler, pixels[idx], ids[idx])
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            accelerator.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
        return float(loss.detach())

    return {"setup_s": setup_s, **_run(steps, step)}


def unet_finetune(foundation, images, prompts, steps: int, batch_size: int, resolution: int, lr: float = 2e-4,
                  seed: int = 0, max_grad_norm: float = 1.0) -> dict:
    return _prompted(foundation, images, prompts, steps, batch_size, resolution, lr, seed, max_grad_norm, 0)


def lora(foundation, images, prompts, steps: int, batch_size: int, resolution: int, lr: float = 1e-3, rank: int = 4,
         seed: int = 0, max_grad_norm: float = 1.0) -> dict:
    return _prompted(foundation, images, prompts, steps, batch_size, resolution, lr, seed, max_grad_norm, rank)
