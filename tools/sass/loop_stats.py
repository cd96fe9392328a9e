"""The innermost MMA loop of each kernel whose mangled name matches a pattern: its instruction count and mix, and the
kernel's registers (from ptxas -v). Both sides of a branch inside the loop are counted, so read the listing
(cuobjdump -sass) where the loop has one."""
import re
import subprocess
import sys

KINDS = ("HMMA", "LDSM", "LDS ", "LDGSTS", "LOP3", "SHF", "PRMT", "HADD2", "HMUL2", "HFMA2", "IMAD", "BAR", "BRA")


def registers(ptxas_log):
    found = {}
    for block in re.split(r"Compiling entry function '", ptxas_log)[1:]:
        used = re.search(r"Used (\d+) registers", block)
        if used:
            found[block.split("'")[0]] = int(used.group(1))
    return found


def short_name(mangled):
    """The kernel's name with its template arguments, namespaces dropped."""
    name = subprocess.run(["c++filt", mangled], capture_output=True, text=True).stdout.strip() or mangled
    name = re.sub(r"\(anonymous namespace\)::|[A-Za-z_][A-Za-z0-9_]*::", "", name)
    name = re.sub(r"^void ", "", name)
    return name[: name.index(">(") + 1] if ">(" in name else name


def main(sass_path, ptxas_path, pattern):
    regs = registers(open(ptxas_path).read())
    print("| kernel | registers | loop instructions | " + " | ".join(k.strip() for k in KINDS) + " |")
    print("|---|---|---|" + "---|" * len(KINDS))
    for function in open(sass_path).read().split("Function : ")[1:]:
        name = function.split("\n")[0].strip()
        if not re.search(pattern, name):
            continue
        code = [(int(a, 16), text.strip()) for a, text in re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", function)]
        loops = []
        for address, text in code:
            target = re.search(r"BRA (0x[0-9a-f]+)", text)
            if target and int(target.group(1), 16) < address:
                body = [t for a, t in code if int(target.group(1), 16) <= a <= address]
                if any("HMMA" in t for t in body):
                    loops.append(body)
        if not loops:
            continue
        body = min(loops, key=len)
        counts = " | ".join(str(sum(kind in t for t in body)) for kind in KINDS)
        print(f"| {short_name(name)} | {regs.get(name, '?')} | {len(body)} | {counts} |")


if __name__ == "__main__":
    main(*sys.argv[1:4])
