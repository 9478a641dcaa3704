"""CPU per image of TorchDataset(crop="random") over a parquet folder (e.g. the push_to_hub folder
bench/train_pipeline.py builds): python bench/parquet_shuffle.py FOLDER."""
import resource, time, sys
import vldata
from torch.utils.data import DataLoader
def cpu():
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime
src = vldata.open(sys.argv[1])
print("blocks", src.block_sizes[:6], "locality", src.locality)
ds = vldata.TorchDataset(src, batch_size=256, decode="cpu", image_size=224, crop="random", scale=(0.9,1.0))
c0,t0=cpu(),time.time(); n=0
for b in DataLoader(ds, batch_size=None, num_workers=2): n+=len(b["key"])
print(f"n={n} {1000*(cpu()-c0)/n:.2f} CPU ms/img, {n/(time.time()-t0):.0f} img/s")
