"""I-BERT integer results do not depend on the device (issue 2 §10). Needs CUDA; skipped without it."""

import pytest
import torch

import intbert


@pytest.mark.gpu
def test_quant_model_on_cuda_gives_the_cpu_integers():
    torch.manual_seed(0)
    config = intbert.IBertConfig(vocab_size=99, hidden_size=36, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=37, max_position_embeddings=40, quant_mode=True)
    cpu = intbert.IBertModel(config)
    ids = torch.randint(2, 99, (3, 11))
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    intbert.calibrate(cpu, [{"input_ids": ids, "attention_mask": mask}])
    cpu.eval()
    gpu = intbert.IBertModel(config)
    gpu.load_state_dict(cpu.state_dict())
    gpu = gpu.cuda().eval()
    with torch.no_grad():
        a = cpu(ids, attention_mask=mask, output_hidden_states=True).hidden_states
        b = gpu(ids.cuda(), attention_mask=mask.cuda(), output_hidden_states=True).hidden_states
    for layer, (x, y) in enumerate(zip(a, b)):
        # Every layer output is int8 * (the same float scale): equal integers give equal values.
        assert torch.equal(x, y.cpu()), f"layer {layer} differs between CPU and CUDA"
