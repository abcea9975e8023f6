"""Machine facts recorded next to every benchmark figure."""
import datetime
import json
import os
import platform
from pathlib import Path


def cpu_name(unknown: str = 'cpu') -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform knows, else ``unknown``."""
    cpu = platform.processor() or unknown
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next((ln.split(':', 1)[1].strip() for ln in f if ln.startswith('model name')),
                       cpu)
    except OSError:
        pass
    return cpu


def machine_info() -> dict:
    import torch
    cpu = cpu_name('')
    return {'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
            'platform': platform.platform(), 'python': platform.python_version(),
            'cpu': cpu, 'cpu_count': os.cpu_count(), 'torch': torch.__version__,
            'torch_threads': torch.get_num_threads(),
            'cuda': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            'load_avg_1m': os.getloadavg()[0]}


def write_report(report: dict, path) -> str:
    """The report as indented JSON; also written to ``path`` (parents created) when given."""
    text = json.dumps(report, indent=2)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + '\n')
    return text
