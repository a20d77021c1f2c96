"""Sentence makers for the pretraining corpus (:mod:`svdlora_pl.embedded.datasets.corpus`).

Each topic is a function ``rng -> list[str]``: a handful of true, self-contained expository sentences about
one theme, freshly filled with random numbers and names, in several wordings. The corpus builder samples and
shuffles them into paragraphs, so no paragraph shape repeats. Every stated number is computed exactly
(integers and :class:`fractions.Fraction`). There are no questions and no question/answer phrasing.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from fractions import Fraction
from math import comb, factorial, gcd

Topic = Callable[[random.Random], list[str]]

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen"
).split()
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
NAMES = ["Anna", "Ben", "Maya", "Omar", "Lena", "Sam", "Priya", "Tom", "Eva", "Noah", "Zoe", "Leo", "Ines", "Kai"]
NAMES += ["Rosa", "Jonas", "Amara", "Felix", "Hana", "Marco", "Nadia", "Oscar", "Lucy", "Ravi"]
COLOURS = ["red", "blue", "green", "yellow", "white", "black", "orange", "purple"]
THINGS = ["apples", "pencils", "marbles", "stickers", "books", "cookies", "stamps", "shells", "buttons", "coins"]
THINGS += ["cards", "tickets", "plums", "beads", "letters", "toy cars", "eggs", "crayons"]
PLACES = ["box", "bag", "basket", "jar", "drawer", "bowl", "tin", "crate"]
RANKS = ["ace", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "jack", "queen", "king"]


def words(n: int) -> str:
    """Spell a whole number from 0 to 999 in English (``42`` -> ``forty-two``)."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f"-{_ONES[ones]}" if ones else "")
    hundreds, rest = divmod(n, 100)
    return f"{_ONES[hundreds]} hundred" + (f" and {words(rest)}" if rest else "")


def frac(value: Fraction | int) -> str:
    """An exact value as an integer (``3``) or a reduced fraction (``3/8``)."""
    value = Fraction(value)
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def one(rng: random.Random, *options: str) -> str:
    """One of several wordings."""
    return rng.choice(options)


def listing(items: Sequence[object]) -> str:
    """``a, b and c``."""
    parts = [str(i) for i in items]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def addition(rng: random.Random) -> list[str]:
    a, b, c = rng.randint(2, 90), rng.randint(2, 60), rng.randint(2, 30)
    return [
        one(rng, f"Adding {a} and {b} gives {a + b}.", f"The sum of {a} and {b} is {a + b}.", f"{a} + {b} = {a + b}."),
        f"In words, {words(a)} plus {words(b)} equals {words(a + b)}.",
        one(rng, f"The order does not matter, so {b} + {a} is also {a + b}.", f"{b} plus {a} is {a + b} as well."),
        one(rng, f"Subtraction undoes addition: {a + b} - {b} = {a}.", f"Taking {b} away from {a + b} leaves {a}."),
        f"Three numbers can be added in any grouping: {a} + {b} + {c} = {a + b + c}.",
        f"The difference between {max(a, b)} and {min(a, b)} is {abs(a - b)}.",
        f"Counting on from {a} by {c} steps reaches {a + c}.",
    ]


def multiplication(rng: random.Random) -> list[str]:
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    thing = rng.choice(THINGS)
    return [
        one(rng, f"The product of {a} and {b} is {a * b}.", f"{a} times {b} is {a * b}.", f"{a} * {b} = {a * b}."),
        f"Multiplying is repeated adding: {b} groups of {a} make {a * b} in total.",
        f"Sharing {a * b} {thing} equally among {b} people gives each person {a}.",
        f"In words, {words(a)} times {words(b)} is {words(a * b)}.",
        f"Dividing {a * b} by {a} gives {b}, because {a} * {b} = {a * b}.",
        f"Doubling {a * b} gives {2 * a * b}, and halving it gives {frac(Fraction(a * b, 2))}.",
        f"A grid with {a} rows and {b} columns has {a * b} squares.",
    ]


def fractions(rng: random.Random) -> list[str]:
    den = rng.randint(2, 12)
    num = rng.randint(1, den - 1)
    k = rng.randint(2, 6)
    value = Fraction(num, den)
    out = [
        f"In the fraction {num * k}/{den * k}, the numerator is {num * k} and the denominator is {den * k}.",
        f"Both {num * k} and {den * k} are divisible by {k * gcd(num, den)}, so {num * k}/{den * k} reduces to "
        f"{frac(value)}.",
        one(
            rng,
            f"The rest of the whole is 1 - {frac(value)} = {frac(1 - value)}.",
            f"What is left over after {frac(value)} of a whole is {frac(1 - value)}.",
        ),
        f"A fraction is a part of a whole: {frac(value)} of a pizza cut into {value.denominator} equal slices is "
        f"{value.numerator} of the slices.",
        f"Taking {frac(value)} of {value.denominator * k} gives {value.numerator * k}.",
        f"The fraction {frac(value)} is {'more than' if value > Fraction(1, 2) else 'at most'} one half.",
    ]
    if 100 % value.denominator == 0:
        out.append(f"As a decimal, {frac(value)} is {float(value):g}, which is {frac(value * 100)} percent.")
    return out


def fraction_sums(rng: random.Random) -> list[str]:
    d1, d2 = rng.randint(2, 9), rng.randint(2, 9)
    x, y = Fraction(rng.randint(1, d1 - 1), d1), Fraction(rng.randint(1, d2 - 1), d2)
    common = x.denominator * y.denominator // gcd(x.denominator, y.denominator)
    xs, ys = x.numerator * common // x.denominator, y.numerator * common // y.denominator
    raw = f"{xs + ys}/{common}"
    product = f"{x.numerator * y.numerator}/{x.denominator * y.denominator}"
    return [
        f"To add {frac(x)} and {frac(y)}, write both over the common denominator {common}: {xs}/{common} + "
        f"{ys}/{common} = {raw}" + (f", which is {frac(x + y)}." if frac(x + y) != raw else "."),
        f"To multiply fractions, multiply the numerators and the denominators: {frac(x)} * {frac(y)} = {product}"
        + (f" = {frac(x * y)}." if frac(x * y) != product else "."),
        f"So {frac(x)} of {frac(y)} is {frac(x * y)}.",
        f"Of the two fractions {frac(x)} and {frac(y)}, the larger is {frac(max(x, y))}."
        if x != y
        else f"The fractions {frac(x)} and {frac(y)} are equal.",
    ]


def counting(rng: random.Random) -> list[str]:
    n = rng.randint(3, 9)
    k = rng.randint(2, n - 1)
    a, b, c = rng.randint(2, 6), rng.randint(2, 6), rng.randint(2, 4)
    thing = rng.choice(THINGS)
    return [
        f"There are {n}! = {factorial(n)} ways to line up {n} different {thing} in a row.",
        f"Choosing {k} of {n} {thing} when the order does not matter can be done in C({n},{k}) = {comb(n, k)} ways.",
        one(
            rng,
            f"A menu with {a} soups and {b} salads allows {a} * {b} = {a * b} different lunches.",
            f"With {a} shirts and {b} hats one can put together {a * b} different outfits.",
        ),
        f"Counting with the multiplication rule, {a} roads, then {b} roads, then {c} roads give {a * b * c} routes.",
        f"The number C({n},{k}) is the same as C({n},{n - k}), since choosing what to keep is choosing what to leave.",
        f"Picking a first, a second and a third prize winner from {n} people can happen in "
        f"{n * (n - 1) * (n - 2)} ways.",
        f"A lock with {c} dials, each showing the digits 0 to 9, has {10**c} settings.",
        f"Numbers such as C({n},{k}) are called binomial coefficients.",
    ]


def _set_text(items: Sequence[int]) -> str:
    return "{" + ", ".join(map(str, items)) + "}" if items else "the empty set"


def sets(rng: random.Random) -> list[str]:
    size = rng.randint(8, 12)
    a = sorted(rng.sample(range(1, size + 1), rng.randint(2, 5)))
    b = sorted(rng.sample(range(1, size + 1), rng.randint(2, 5)))
    union, inter = sorted(set(a) | set(b)), sorted(set(a) & set(b))
    return [
        f"Let A be the set {_set_text(a)} and B the set {_set_text(b)}; their union is {_set_text(union)}.",
        f"The intersection of {_set_text(a)} and {_set_text(b)} is {_set_text(inter)}.",
        f"By inclusion and exclusion, the union has {len(a)} + {len(b)} - {len(inter)} = {len(union)} elements.",
        f"Within the numbers 1 to {size}, the complement of {_set_text(a)} has {size - len(a)} elements.",
        f"The elements of {_set_text(a)} that are not in {_set_text(b)} form {_set_text(sorted(set(a) - set(b)))}.",
        f"A set with {len(a)} elements has {2 ** len(a)} subsets, counting the empty set and the set itself.",
        "Two sets with no element in common are called disjoint.",
    ]


def number_facts(rng: random.Random) -> list[str]:
    n = rng.randint(2, 400)
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    prime = len(divisors) == 2
    return [
        f"The number {n} is {'even' if n % 2 == 0 else 'odd'}.",
        f"The divisors of {n} are {listing(divisors)}.",
        f"{n} is a prime number, since its only divisors are 1 and itself."
        if prime
        else f"{n} is not a prime, since {divisors[1]} divides it.",
        f"The square of {n} is {n * n}, and twice {n} is {2 * n}.",
        f"Written in words, {n} is {words(n)}.",
        f"The next multiple of 10 after {n} is {(n // 10 + 1) * 10}.",
        f"In the number {n}, the ones digit is {n % 10}.",
    ]


def dice(rng: random.Random) -> list[str]:
    sides = rng.choice([4, 6, 8, 10, 12, 20])
    a, b = rng.randint(1, 6), rng.randint(1, 6)
    name = rng.choice(NAMES)
    return [
        "An ordinary die is a small cube with six faces showing the numbers 1 to 6.",
        "Dice is the plural of die.",
        f"On a standard die, opposite faces add up to 7, so the face opposite {a} shows {7 - a}.",
        f"Board games also use dice with {sides} sides, numbered from 1 to {sides}.",
        f"{name} rolled a {a} and a {b}, for a total of {a + b}.",
        "A fair die is balanced so that each face has the same chance of landing on top.",
        "With two dice the smallest possible total is 2 and the largest is 12.",
        "Rolling the same number on two dice is called doubles, and the faces run from 1 through 6.",
        f"The numbers on a {sides}-sided die add up to {sides * (sides + 1) // 2}.",
    ]


def coins(rng: random.Random) -> list[str]:
    n = rng.randint(2, 8)
    heads = rng.randint(0, n)
    name = rng.choice(NAMES)
    return [
        "A coin has two sides, called heads and tails.",
        "Tossing a coin is an old way to settle a choice between two people.",
        "To flip a coin, toss it into the air with the thumb and let it land.",
        f"Tossing {n} coins one after another gives 2^{n} = {2**n} possible sequences of heads and tails.",
        f"{name} flipped a coin {n} times and saw {heads} heads and {n - heads} tails.",
        "A coin is fair when heads and tails are equally likely; a bent coin may be biased.",
        f"A sequence of {n} tosses with exactly one head can have the head in any of {n} places.",
        f"A jar of {n * 5} coins worth 5 cents each holds {n * 25} cents.",
    ]


def cards(rng: random.Random) -> list[str]:
    rank = rng.choice(RANKS)
    k = rng.randint(1, 4)
    return [
        "A standard deck has 52 cards in 4 suits: hearts, diamonds, clubs and spades.",
        "Each suit has 13 ranks: ace, the numbers two to ten, and then jack, queen and king.",
        "Hearts and diamonds are red suits, while clubs and spades are black.",
        "The jack, queen and king are called face cards, and a deck has 12 of them.",
        f"There are 4 cards of each rank, so a deck holds 4 {rank}s, one in every suit.",
        "Shuffling the deck puts the cards in a random order.",
        "Drawing without replacement means a card is not put back, so the deck shrinks by one each time.",
        f"After {k} cards are dealt from a full deck, {52 - k} cards remain.",
    ]


def bags(rng: random.Random) -> list[str]:
    red, blue = rng.randint(1, 9), rng.randint(1, 9)
    place = rng.choice(["urn", "bag", "box", "jar"])
    kind = rng.choice(["balls", "marbles"])
    name = rng.choice(NAMES)
    return [
        f"{name} has a {place} with {red} red {kind} and {blue} blue {kind}, {red + blue} in all.",
        f"Of the {red + blue} {kind}, {red} out of {red + blue}, or {frac(Fraction(red, red + blue))}, are red.",
        f"In puzzles an urn is simply a container holding {kind} of different colours.",
        f"Drawing at random means every one of the {red + blue} {kind} has the same chance of being picked.",
        f"If {name} adds {red} more red {kind}, the {place} holds {2 * red + blue}.",
        f"Taking out one blue {kind[:-1]} leaves {blue - 1} blue and {red} red ones.",
    ]


def sports(rng: random.Random) -> list[str]:
    games = rng.randint(5, 30)
    won = rng.randint(1, games - 1)
    shots = rng.randint(5, 20)
    made = rng.randint(1, shots)
    name = rng.choice(NAMES)
    return [
        f"A team that won {won} of its {games} games lost {games - won} of them.",
        f"Winning {won} games out of {games} is a share of {frac(Fraction(won, games))}.",
        "In basketball, a free throw is an unguarded shot from the line and is worth one point.",
        f"{name} took {shots} free throws in practice and made {made} of them.",
        f"A basketball player scores 2 points for most shots, so {made} such shots are worth {2 * made} points.",
        "A player can make or miss each shot, and one shot does not change the next.",
        f"Over {games} games, a player who scores {won} points per game scores {games * won} points.",
    ]


def medicine(rng: random.Random) -> list[str]:
    people, per_hundred = rng.choice([100, 200, 500, 1000, 2000]), rng.randint(1, 20)
    sick = people * per_hundred // 100
    return [
        "A screening test checks many people for a condition before they feel ill.",
        "A test result can be positive or negative, and no test is right every time.",
        "A positive result for a healthy person is called a false positive.",
        f"In a town of {people} residents where {per_hundred} in every 100 have a condition, {sick} people have it "
        f"and {people - sick} do not.",
        "Doctors call the share of people who have a disease its prevalence.",
        f"A rate of {per_hundred} percent means {per_hundred} out of every 100, which is "
        f"{frac(Fraction(per_hundred, 100))}.",
        "The sensitivity of a test is the share of ill patients it correctly detects.",
    ]


def money(rng: random.Random) -> list[str]:
    price, count = rng.randint(2, 15), rng.randint(2, 9)
    paid = rng.choice([v for v in (20, 50, 100, 200) if v >= price * count])
    win, lose = rng.randint(2, 20), rng.randint(1, 10)
    name = rng.choice(NAMES)
    return [
        f"{count} tickets at {price} dollars each cost {price * count} dollars.",
        f"Paying with {paid} dollars for {price * count} dollars of goods gives {paid - price * count} dollars in "
        "change.",
        f"In a game {name} won {win} dollars and then lost {lose} dollars, ending {win - lose} dollars "
        f"{'ahead' if win >= lose else 'behind'}."
        if win != lose
        else f"In a game {name} won {win} dollars and then lost {lose} dollars, ending even.",
        f"Saving {price} dollars a week for {count} weeks adds up to {price * count} dollars.",
        f"A price of {price * 4} dollars cut by one quarter becomes {price * 3} dollars.",
        "A loss can be written as a negative number of dollars.",
        "In many games a player can win or lose a little money on each turn.",
    ]


def everyday(rng: random.Random) -> list[str]:
    n = rng.randint(2, 9)
    return [
        f"A week has 7 days, so {n} weeks have {7 * n} days.",
        "The days of the week are Monday, Tuesday, Wednesday, Thursday, Friday, Saturday and Sunday.",
        f"A day has 24 hours, so {n} days have {24 * n} hours.",
        f"An hour has 60 minutes, so {n} hours have {60 * n} minutes.",
        f"A dozen is 12, so {n} dozen eggs are {12 * n} eggs.",
        f"A year has 12 months, so {n} years have {12 * n} months.",
        f"A triangle has 3 sides and a square has 4, so {n} of each have {7 * n} sides together.",
        f"A metre is 100 centimetres, so {n} metres are {100 * n} centimetres.",
        f"A kilogram is 1000 grams, so half a kilogram is 500 grams and {n} kilograms are {1000 * n} grams.",
        f"It rained on {n - 1} of the last {n + 5} days in the city." if n > 2 else "It rained all week.",
    ]


def story(rng: random.Random) -> list[str]:
    name, friend = rng.sample(NAMES, 2)
    thing, place = rng.choice(THINGS), rng.choice(PLACES)
    have, more = rng.randint(3, 20), rng.randint(1, 12)
    give = rng.randint(1, have + more - 1)
    return [
        f"{name} has {have} {thing} in a {place}.",
        one(
            rng,
            f"Later {name} finds {more} more, so there are now {have + more}.",
            f"A friend adds {more}, which makes {have + more}.",
        ),
        f"{name} gives {give} of them to {friend} and keeps {have + more - give}.",
        f"Together the two of them still have {have + more} {thing}.",
    ]


def averages(rng: random.Random) -> list[str]:
    values = [rng.randint(1, 20) for _ in range(rng.randint(2, 5))]
    total, count = sum(values), len(values)
    mean = Fraction(total, count)
    return [
        f"The numbers {listing(values)} add up to {total}.",
        f"Their mean, or average, is {total}/{count}"
        + (f" = {frac(mean)}." if frac(mean) != f"{total}/{count}" else "."),
        f"The largest of {listing(values)} is {max(values)} and the smallest is {min(values)}.",
        "The mean is the value each number would have if the total were shared out equally.",
        "Over many repetitions, the average result of a game settles near its expected value.",
    ]


def chance(rng: random.Random) -> list[str]:
    parts = rng.randint(3, 12)
    fav = rng.randint(1, parts - 1)
    colour = rng.choice(COLOURS)
    return [
        f"A spinner is split into {parts} equal parts and {fav} of them are {colour}.",
        f"In the long run the arrow stops on {colour} about {fav} times in every {parts} spins.",
        f"The chance of {colour} is {frac(Fraction(fav, parts))}, and the chance of another colour is "
        f"{frac(Fraction(parts - fav, parts))}.",
        "A chance of 0 means something never happens and a chance of 1 means it always happens.",
        "The chances of all the possible outcomes always add up to 1.",
        "Probability is another word for chance; it is a number from 0 to 1.",
        "Results that cannot happen together are called mutually exclusive.",
        "Two events are independent when knowing one tells nothing about the other.",
    ]


def glossary(rng: random.Random) -> list[str]:
    n, k, a = rng.randint(2, 30), rng.randint(2, 9), rng.randint(5, 40)
    legs = rng.choice([(3, 4, 5), (5, 12, 13), (6, 8, 10), (8, 15, 17)])
    return [
        f"A number greater than zero is called positive, so {n} is positive and -{n} is negative.",
        f"The phrase at least {k} means {k} or more, and at most {k} means {k} or fewer.",
        f"A formula is a rule written with symbols; a {k} by {n} rectangle has area {k} * {n} = {k * n}.",
        f"A theorem is a statement that has been proved; by the theorem of Pythagoras a right triangle with legs "
        f"{legs[0]} and {legs[1]} has a longest side of {legs[2]}.",
        "An outcome is one possible result of an experiment, and a favourable outcome is one we are counting.",
        f"Things that come in twos are called pairs, so {2 * n} socks make {n} pairs.",
        "The expectation, or expected value, of a quantity is its long-run average.",
        "Linearity of expectation means that the average of a sum is the sum of the averages.",
        "Bayes' theorem, named after Thomas Bayes, tells how a chance changes when new information arrives.",
        f"Each of the {n} coins contributes one to the count, whether it shows a head or a tail.",
        f"A number qualifies as a multiple of {k} when {k} divides it exactly, as {k * n} does.",
        f"A trial that succeeds {k} times out of {k + n} succeeds in a share of {frac(Fraction(k, k + n))}.",
        f"The complement of an event is everything else that can happen; {a} percent and {100 - a} percent are "
        "complements.",
    ]


TOPICS: list[Topic] = [
    addition,
    multiplication,
    fractions,
    fraction_sums,
    counting,
    sets,
    number_facts,
    dice,
    coins,
    cards,
    bags,
    sports,
    medicine,
    money,
    everyday,
    story,
    averages,
    chance,
    glossary,
]
ORDERED = {story}
"""Topics whose sentences form a sequence: the paragraph keeps their order (and takes a prefix)."""
