"""Benchmark the DDPM prior's UNet against diffusers' UNet2DModel at matched FLOPs.

    .venv/bin/pip install -r requirements-bench.txt   # diffusers, optional
    .venv/bin/python bench/bench_prior.py --json out/bench_prior.json

Both networks are built from the same config (default: the 'default' prior preset at 64x64);
diffusers' base width is the multiple of 8 whose forward FLOPs (torch.utils.flop_counter) come
closest to ours. Measured in the same run, interleaved (a, b, a, b, ...) so load from other
processes hits both alike: training images/s (eps loss, forward + backward + Adam step) and the
time to draw a batch of samples with DDIM at the config's default steps (ours: ddim_sample;
diffusers: its DDIMScheduler loop). Ratios are ours / diffusers: time below 1 or images/s above
1 means ours is faster. bf16 autocast on CUDA for both, fp32 on CPU.
"""
import argparse
import json
import sys
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from bench_cem import time_ms  # noqa: E402
from machine import machine_info, write_report  # noqa: E402

from world_model_ctrl.cem import resolve_device  # noqa: E402
from world_model_ctrl.diffusion import DiffusionConfig, PriorModel  # noqa: E402


def forward_flops(net, x, t) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        net(x, t)
    return fc.get_total_flops()


def make_diffusers_unet(cfg: DiffusionConfig, base: int):
    from diffusers import UNet2DModel
    n = len(cfg.channel_mults)
    down = ['DownBlock2D'] * n
    return UNet2DModel(sample_size=cfg.image_size, in_channels=cfg.channels,
                       out_channels=cfg.channels, layers_per_block=cfg.num_res_blocks,
                       block_out_channels=tuple(base * m for m in cfg.channel_mults),
                       down_block_types=tuple(down), up_block_types=('UpBlock2D',) * n,
                       norm_num_groups=8, add_attention=cfg.attention, dropout=cfg.dropout)


def matched_diffusers_unet(cfg: DiffusionConfig, ours_flops: int):
    """diffusers UNet2DModel of the same layout whose base width best matches our FLOPs."""
    x = torch.zeros(1, cfg.channels, cfg.image_size, cfg.image_size)
    t = torch.zeros(1, dtype=torch.long)
    best = None
    for base in range(8, 2 * cfg.base_channels + 1, 8):
        unet = make_diffusers_unet(cfg, base).eval()
        flops = forward_flops(lambda a, b: unet(a, b).sample, x, t)
        score = abs(flops / ours_flops - 1)
        if best is None or score < best[0]:
            best = (score, base, unet, flops)
    return best[1:]


def bench_device(device, cfg, args, unet):
    torch.manual_seed(0)
    amp = (torch.autocast('cuda', dtype=torch.bfloat16) if device.type == 'cuda'
           else nullcontext())
    ours = PriorModel(cfg).to(device).train()
    B, T = args.batch, cfg.timesteps
    images = torch.rand(B, cfg.channels, cfg.image_size, cfg.image_size, device=device)
    opt = torch.optim.Adam(ours.parameters(), lr=1e-4)

    def train_ours():
        with amp:
            loss = ours.loss(images)['loss']
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    fns = {'ours_train': train_ours}
    sample_fns = {'ours_sample': lambda: ours.ddim_sample(args.samples, args.sample_steps)}
    if unet is not None:
        from diffusers import DDIMScheduler, DDPMScheduler
        unet = unet.to(device).train()
        beta = 'squaredcos_cap_v2' if cfg.schedule == 'cosine' else 'linear'
        train_sched = DDPMScheduler(num_train_timesteps=T, beta_schedule=beta)
        ddim = DDIMScheduler(num_train_timesteps=T, beta_schedule=beta, clip_sample=True)
        opt_d = torch.optim.Adam(unet.parameters(), lr=1e-4)
        x0 = images * 2 - 1

        def train_diffusers():
            t = torch.randint(0, T, (B,), device=device)
            eps = torch.randn_like(x0)
            with amp:
                pred = unet(train_sched.add_noise(x0, eps, t), t).sample
            loss = F.mse_loss(pred.float(), eps)
            opt_d.zero_grad(set_to_none=True)
            loss.backward()
            opt_d.step()

        @torch.no_grad()
        def sample_diffusers():
            ddim.set_timesteps(args.sample_steps)
            x = torch.randn(args.samples, cfg.channels, cfg.image_size, cfg.image_size,
                            device=device)
            for t in ddim.timesteps:
                with amp:
                    eps = unet(x, t.to(device)).sample
                x = ddim.step(eps.float(), t, x).prev_sample
            return x

        fns['diffusers_train'] = train_diffusers
        sample_fns['diffusers_sample'] = sample_diffusers
    train_t = time_ms(fns, device, args.warmup, args.train_iters)
    ours.eval()
    if unet is not None:
        unet.eval()
    with amp:
        sample_t = time_ms(sample_fns, device, 1, args.sample_runs)
    row = {'device': str(device), 'batch': B, 'samples': args.samples,
           'sample_steps': args.sample_steps}
    for name, t in {**train_t, **sample_t}.items():
        row[f'{name}_ms'] = t
    row['ours_images_per_s'] = round(B / train_t['ours_train']['p50'] * 1e3, 1)
    row['ours_sample_ms'] = sample_t['ours_sample']['p50']
    if unet is not None:
        row['diffusers_images_per_s'] = round(B / train_t['diffusers_train']['p50'] * 1e3, 1)
        row['diffusers_sample_ms'] = sample_t['diffusers_sample']['p50']
        row['ratio_images_per_s_ours_over_diffusers'] = round(
            row['ours_images_per_s'] / row['diffusers_images_per_s'], 3)
        row['ratio_sample_time_ours_over_diffusers'] = round(
            row['ours_sample_ms'] / row['diffusers_sample_ms'], 3)
    print(json.dumps({k: v for k, v in row.items() if not k.endswith('_ms')
                      or k in ('ours_sample_ms', 'diffusers_sample_ms')}))
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--json', help='write results here')
    p.add_argument('--preset', default='default', help='prior preset: default, small, debug')
    p.add_argument('--image-size', type=int, default=64)
    p.add_argument('--batch', type=int, default=16, help='training batch')
    p.add_argument('--train-iters', type=int, default=10)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--samples', type=int, default=8, help='images per DDIM sampling run')
    p.add_argument('--sample-steps', type=int, help='DDIM steps (default: the config)')
    p.add_argument('--sample-runs', type=int, default=3)
    p.add_argument('--threads', type=int, default=2, help='torch CPU threads')
    p.add_argument('--devices', default='cpu,cuda', help='those available are run')
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = DiffusionConfig.from_preset(args.preset, image_size=args.image_size)
    args.sample_steps = args.sample_steps or cfg.sample_steps

    x = torch.zeros(1, cfg.channels, cfg.image_size, cfg.image_size)
    t = torch.zeros(1, dtype=torch.long)
    ours = PriorModel(cfg).eval()
    ours_flops = forward_flops(ours, x, t)
    model = {'config': cfg.to_dict(), 'ours_gflops_per_image': round(ours_flops / 1e9, 4),
             'ours_params': sum(q.numel() for q in ours.parameters())}
    try:
        import diffusers
        diffusers_version = diffusers.__version__
    except ImportError as e:
        diffusers_version = None
        print(f'diffusers is NOT installed ({e}): timing ours only. '
              'pip install -r requirements-bench.txt for the comparison.')
    unet = None
    if diffusers_version:
        base, unet, flops = matched_diffusers_unet(cfg, ours_flops)
        model.update({'diffusers_base_channels': base,
                      'diffusers_gflops_per_image': round(flops / 1e9, 4),
                      'diffusers_params': sum(q.numel() for q in unet.parameters()),
                      'flops_ratio_ours_over_diffusers': round(ours_flops / flops, 4)})
    print(json.dumps(model))
    devices = [d for d in args.devices.split(',')
               if d == 'cpu' or (d.startswith('cuda') and torch.cuda.is_available())]
    results = [bench_device(resolve_device(d), cfg, args, unet) for d in devices]
    report = {
        'benchmark': 'DDPM prior UNet vs diffusers UNet2DModel (matched FLOPs)',
        'machine': machine_info(), 'diffusers': diffusers_version or 'unavailable',
        'model': model,
        'note': 'ratios are ours / diffusers; images_per_s: training (fwd + bwd + Adam); '
                'sample_ms: one DDIM run of `samples` images at `sample_steps`',
        'results': results,
    }
    write_report(report, args.json)
    if args.json:
        print(f'wrote {args.json}')


if __name__ == '__main__':
    main()
